"""Max-pooling over tiling windows as native XLA:CPU custom calls.

XLA:CPU computes a 2x2 max-pool of a [B, H, W, C] map, and its gradient,
as loop fusions over the tiles' 6-D view that it does not vectorise well,
and it recomputes each window's max and index from the full-size input in
the backward pass rather than keeping them (the MNIST CNN's bfloat16 train
step: ~11 ms of ~40 in these fusions on a 2-core AMD EPYC Zen 4; with
the kernels 4 ms of loop fusions and 2.5 ms in the kernels' gradients,
the step 35.6 -> 32.0 ms, medians of 4 alternated pairs).
native/max_pool.cc does both in one pass each: the forward writes the
pooled map and a uint8 index (the window's first maximal element,
row-major), the backward reads the gradient and the index at the pooled
resolution and writes the input-sized gradient once.

`max_pool(x, window)` is the differentiable op (float32 or bfloat16,
channels-last with 2 spatial dims, windows of at most 255 elements, stride
= window, no padding): bitwise the values and gradients of
ops.max_pool's XLA path (a NaN window passes no gradient, ties go to the
first element). `usable` says whether it can run here; ops.max_pool uses it
on the CPU where it can. Under vmap the members fold into the batch; under
data parallelism each device pools its shard of the batch.
"""

import functools
from typing import Tuple

import jax
from jax import custom_batching
from jax.experimental import custom_partitioning
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_calls

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# The index is a uint8: windows up to 255 elements (255 marks a NaN window).
MAX_WINDOW_ELEMENTS = 255


def cpu_supported() -> bool:
  """Whether this CPU runs the kernels: the native library built and
  AVX-512 (oneDNN's avx512_core or newer, after ONEDNN_MAX_CPU_ISA). They
  are AVX-512 code; elsewhere XLA's fusions are the faster path."""
  return (onednn_build.available()
          and onednn_build.cpu_isa().startswith("avx512_core"))


def usable(x, window: Tuple[int, ...]) -> bool:
  """Whether `max_pool(x, window)` runs here: the CPU backend on a CPU that
  runs the kernels (`cpu_supported`), x [B, H, W, C] float32 or bfloat16,
  a window that fits."""
  return (jax.default_backend() == "cpu" and x.ndim == 4
          and jnp.dtype(x.dtype) in _DTYPES and len(window) == 2
          and 1 <= int(np.prod(window)) < MAX_WINDOW_ELEMENTS
          and all(1 <= w <= n for w, n in zip(window, x.shape[1:3]))
          and cpu_supported())


def _attributes(window):
  return {"wh": np.int64(window[0]), "ww": np.int64(window[1])}


def _pooled_shape(shape, window):
  # The spatial sizes are multiples of the window (max_pool crops).
  return (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])


def _local_forward(window, x):
  shape = _pooled_shape(x.shape, window)
  return jax.ffi.ffi_call(onednn_build.MAX_POOL_FORWARD, (
      jax.ShapeDtypeStruct(shape, x.dtype),
      jax.ShapeDtypeStruct(shape, jnp.uint8)))(x, **_attributes(window))


def _local_backward(window, g, index):
  # The input's spatial sizes are multiples of the window (max_pool crops).
  shape = (g.shape[0], g.shape[1] * window[0], g.shape[2] * window[1],
           g.shape[3])
  return jax.ffi.ffi_call(onednn_build.MAX_POOL_BACKWARD,
                          jax.ShapeDtypeStruct(shape, g.dtype))(
                              g, index, **_attributes(window))


# Every operand and result is per example: split along the batch (dim 0),
# never gathered onto one device.
def _by_batch(mesh, arg_shapes):
  return jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(onednn_calls.batch_axes(arg_shapes)))


def _per_example(local, results: int, rule: str):
  """custom_partitioning of `local(window, *operands)`: each device runs it
  on its shard of the batch."""
  call = custom_partitioning.custom_partitioning(local, static_argnums=(0,))

  def infer(window, mesh, arg_shapes, result_shape):
    del window, result_shape
    sharding = _by_batch(mesh, arg_shapes)
    return (sharding,) * results if results > 1 else sharding

  def partition(window, mesh, arg_shapes, result_shape):
    del result_shape
    sharding = _by_batch(mesh, arg_shapes)
    result = (sharding,) * results if results > 1 else sharding
    return (mesh, functools.partial(local, window), result,
            (sharding,) * len(arg_shapes))

  def sharding_rule(window, mesh, operand_types, result_types):
    del window, mesh, operand_types, result_types
    return onednn_calls.batch_only_rule(rule)

  call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=sharding_rule)
  return call


_forward_call = _per_example(_local_forward, 2,
                             "b h w c -> b i j c, b i j c")
_backward_call = _per_example(_local_backward, 1,
                              "b i j c, b i j c -> b h w c")


def _fold(a, axis_size):
  """[K, B, ...] -> [K * B, ...]."""
  return a.reshape(axis_size * a.shape[1], *a.shape[2:])


@functools.lru_cache(maxsize=None)
def _forward(window):
  """x -> (pooled, index), vmappable: members fold into the batch."""

  @custom_batching.custom_vmap
  def run(x):
    return _forward_call(window, x)

  @run.def_vmap
  def _rule(axis_size, in_batched, x):
    del in_batched  # x is the only operand, so it is batched
    pooled, index = run(_fold(x, axis_size))
    unfold = lambda a: a.reshape(axis_size, -1, *a.shape[1:])
    return (unfold(pooled), unfold(index)), (True, True)

  return run


@functools.lru_cache(maxsize=None)
def _backward(window):
  """(g, index) -> dx, vmappable."""

  @custom_batching.custom_vmap
  def run(g, index):
    return _backward_call(window, g, index)

  @run.def_vmap
  def _rule(axis_size, in_batched, g, index):
    g, index = (a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                for a, batched in zip((g, index), in_batched))
    dx = run(_fold(g, axis_size), _fold(index, axis_size))
    return dx.reshape(axis_size, -1, *dx.shape[1:]), True

  return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x, window):
  return _pooled_and_index(x, window)[0]


def _pool_fwd(x, window):
  return _pooled_and_index(x, window)  # (pooled, the residual index)


def _pick(x, index, window):
  """Each window's element at `index`: what the pool's outputs are of x,
  as a linear function of x (XLA ops, transposable)."""
  b, rows, cols, c = index.shape
  tiles = x.reshape(b, rows, window[0], cols, window[1], c)
  picked = jnp.zeros(index.shape, x.dtype)
  for r in range(window[0]):
    for s in range(window[1]):
      picked = jnp.where(index == r * window[1] + s, tiles[:, :, r, :, s, :],
                         picked)
  return picked


# (pooled, index) of the forward kernel, differentiable (for derivatives of
# the gradient): the pooled values' tangent is the tangent's indexed element.
@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _pooled_and_index(x, window):
  return _forward(window)(x)


@_pooled_and_index.defjvp
def _pooled_and_index_jvp(window, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  pooled, index = _pooled_and_index(x, window)
  return (pooled, index), (_pick(x_dot, index, window),
                           np.zeros(index.shape, jax.dtypes.float0))


def _pool_bwd(window, index, g):
  return (_scatter(g, index, window),)


_pool.defvjp(_pool_fwd, _pool_bwd)


# The gradient's own VJP (second-order derivatives through the pool): it is
# linear in g, and its transpose picks each window's indexed element.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _scatter(g, index, window):
  return _backward(window)(g, index)


def _scatter_fwd(g, index, window):
  return _scatter(g, index, window), index


def _scatter_bwd(window, index, dx_cotangent):
  return (_pick(dx_cotangent, index, window),
          np.zeros(index.shape, jax.dtypes.float0))


_scatter.defvjp(_scatter_fwd, _scatter_bwd)


def max_pool(x, window: Tuple[int, int]):
  """Max over non-overlapping windows of [B, H, W, C] (the trailing rows
  and columns a window does not fit are dropped, as 'valid' pooling does);
  call only where `usable(x, window)`."""
  window = tuple(int(w) for w in window)
  onednn_build.library()  # built and its custom calls registered
  rows, cols = (x.shape[1] // window[0] * window[0],
                x.shape[2] // window[1] * window[1])
  if (rows, cols) != x.shape[1:3]:
    x = x[:, :rows, :cols, :]
  return _pool(x, window)
