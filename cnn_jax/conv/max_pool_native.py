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
channels-last with 2 spatial dims, windows of at most 254 elements, stride
= window, no padding): bitwise the values and gradients of
ops.max_pool's XLA path (a NaN window passes no gradient, ties go to the
first element). `usable` says whether it can run here; ops.max_pool uses it
on the CPU where it can. Under vmap the members fold into the batch; under
data parallelism each device pools its shard of the batch.

`max_pool_bias_relu(x, bias, window)` is a conv block's pool, bias and
ReLU (ops.max_pool_bias_relu, layers.ConvReluMaxPool) in the same two
passes: the forward adds the bias to each window's max in float32, applies
the ReLU, rounds to x's dtype and marks the windows the ReLU zeroes in the
index (NO_GRADIENT); the backward writes x's gradient and each pooled
row's bias-gradient sum in one pass. Without it XLA ran the bias, ReLU,
their gradients and the dtype conversions between them as 6 loop fusions
and 2 reductions at the pooled resolution: the MNIST CNN's bfloat16 train
step lost 3.2 -> 1.6 ms of XLA fusions, 0.89x the step time (median of 6
alternated pairs of 14 calls of 39 steps, 2-core AMD EPYC Zen 4).
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


def _local_bias_relu(window, x, bias_rows):
  shape = _pooled_shape(x.shape, window)
  return jax.ffi.ffi_call(onednn_build.MAX_POOL_BIAS_RELU, (
      jax.ShapeDtypeStruct(shape, x.dtype),
      jax.ShapeDtypeStruct(shape, jnp.uint8)))(x, bias_rows,
                                               **_attributes(window))


def _local_backward(window, g, index):
  # The input's spatial sizes are multiples of the window (max_pool crops).
  shape = (g.shape[0], g.shape[1] * window[0], g.shape[2] * window[1],
           g.shape[3])
  return jax.ffi.ffi_call(onednn_build.MAX_POOL_BACKWARD,
                          jax.ShapeDtypeStruct(shape, g.dtype))(
                              g, index, **_attributes(window))


def _local_backward_bias_relu(window, g, index):
  shape = (g.shape[0], g.shape[1] * window[0], g.shape[2] * window[1],
           g.shape[3])
  return jax.ffi.ffi_call(onednn_build.MAX_POOL_BIAS_RELU_BACKWARD, (
      jax.ShapeDtypeStruct(shape, g.dtype),
      jax.ShapeDtypeStruct((g.shape[0], g.shape[1], g.shape[3]),
                           jnp.float32)))(g, index, **_attributes(window))


# Every operand and result is per example: split along the batch (dim 0),
# never gathered onto one device (but those `per_example` is told are
# shared).
def _by_batch(mesh, arg_shapes):
  return jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(onednn_calls.batch_axes(arg_shapes)))


def per_example(local, results: int, rule: str, shared=()):
  """custom_partitioning of `local(static, *operands)`: each device runs it
  on its shard of the batch (dim 0 of every operand and result), with the
  operands at the indices in `shared` (e.g. a kernel) whole on every
  device. Also conv_pool_native's."""
  call = custom_partitioning.custom_partitioning(local, static_argnums=(0,))

  def operand_shardings(mesh, arg_shapes):
    replicated = jax.sharding.NamedSharding(mesh,
                                            jax.sharding.PartitionSpec())
    by_batch = _by_batch(mesh, arg_shapes)
    return tuple(replicated if i in shared else by_batch
                 for i in range(len(arg_shapes)))

  def infer(static, mesh, arg_shapes, result_shape):
    del static, result_shape
    sharding = _by_batch(mesh, arg_shapes)
    return (sharding,) * results if results > 1 else sharding

  def partition(static, mesh, arg_shapes, result_shape):
    del result_shape
    sharding = _by_batch(mesh, arg_shapes)
    result = (sharding,) * results if results > 1 else sharding
    return (mesh, functools.partial(local, static), result,
            operand_shardings(mesh, arg_shapes))

  def sharding_rule(static, mesh, operand_types, result_types):
    del static, mesh, operand_types, result_types
    return onednn_calls.batch_only_rule(rule)

  call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=sharding_rule)
  return call


_forward_call = per_example(_local_forward, 2,
                             "b h w c -> b i j c, b i j c")
_backward_call = per_example(_local_backward, 1,
                              "b i j c, b i j c -> b h w c")
_bias_relu_call = per_example(_local_bias_relu, 2,
                               "b h w c, b c -> b i j c, b i j c")
_backward_bias_relu_call = per_example(_local_backward_bias_relu, 2,
                                        "b i j c, b i j c -> b h w c, b i c")


def _fold(a, axis_size):
  """[K, B, ...] -> [K * B, ...]."""
  return a.reshape(axis_size * a.shape[1], *a.shape[2:])


def members_in_the_batch(call):
  """`call(*operands)` (per-example operands and results) made vmappable:
  the members fold into the batch, one call for all of them (also
  conv_pool_native's)."""

  @custom_batching.custom_vmap
  def run(*operands):
    return call(*operands)

  @run.def_vmap
  def _rule(axis_size, in_batched, *operands):
    operands = [a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                for a, batched in zip(operands, in_batched)]
    results = run(*(_fold(a, axis_size) for a in operands))
    unfold = lambda a: a.reshape(axis_size, -1, *a.shape[1:])
    if isinstance(results, tuple):
      return tuple(map(unfold, results)), (True,) * len(results)
    return unfold(results), True

  return run


@functools.lru_cache(maxsize=None)
def _forward(window):
  """x -> (pooled, index), vmappable."""
  return members_in_the_batch(functools.partial(_forward_call, window))


@functools.lru_cache(maxsize=None)
def _backward(window):
  """(g, index) -> dx, vmappable."""
  return members_in_the_batch(functools.partial(_backward_call, window))


@functools.lru_cache(maxsize=None)
def _forward_bias_relu(window):
  """(x, bias rows [B, C] float32) -> (relu(pooled + bias), index),
  vmappable."""
  return members_in_the_batch(functools.partial(_bias_relu_call, window))


@functools.lru_cache(maxsize=None)
def _backward_bias_relu(window):
  """(g, index) -> (dx, the bias gradient's per-row sums [B, H', C]),
  vmappable."""
  return members_in_the_batch(
      functools.partial(_backward_bias_relu_call, window))


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


# The biased pool: relu(max_pool(x) + bias) in one pass, for
# layers.ConvReluMaxPool. Its index is NO_GRADIENT where the ReLU is zero.
NO_GRADIENT = 255  # native/max_pool.cc's kNoGradient


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _biased_and_index(x, bias, window):
  rows = jnp.broadcast_to(bias.astype(jnp.float32), (x.shape[0], x.shape[-1]))
  return _forward_bias_relu(window)(x, rows)


@_biased_and_index.defjvp
def _biased_and_index_jvp(window, primals, tangents):
  (x, bias), (x_dot, bias_dot) = primals, tangents
  y, index = _biased_and_index(x, bias, window)
  # Linear where the ReLU passes, zero where it does not: the indexed
  # element's tangent plus the bias's.
  y_dot = jnp.where(index != NO_GRADIENT,
                    _pick(x_dot, index, window).astype(jnp.float32)
                    + bias_dot.astype(jnp.float32), 0.0).astype(x_dot.dtype)
  return (y, index), (y_dot, np.zeros(index.shape, jax.dtypes.float0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pool_bias_relu(x, bias, window):
  return _biased_and_index(x, bias, window)[0]


def _pool_bias_relu_fwd(x, bias, window):
  y, index = _biased_and_index(x, bias, window)
  return y, (index, bias)  # bias ([C]) for its gradient's dtype


def _pool_bias_relu_bwd(window, residuals, g):
  index, bias = residuals
  dx, rows = _scatter_bias_relu(g, index, window)
  return dx, jnp.sum(rows, axis=(0, 1)).astype(bias.dtype)


_pool_bias_relu.defvjp(_pool_bias_relu_fwd, _pool_bias_relu_bwd)


# The biased pool's gradient (dx, per-row bias sums), linear in g; its own
# VJP for second-order derivatives: the indexed element of dx's cotangent
# plus, where the ReLU passes, the row's bias cotangent.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _scatter_bias_relu(g, index, window):
  return _backward_bias_relu(window)(g, index)


def _scatter_bias_relu_fwd(g, index, window):
  return _scatter_bias_relu(g, index, window), index


def _scatter_bias_relu_bwd(window, index, cotangents):
  dx_cotangent, rows_cotangent = cotangents
  g_cotangent = _pick(dx_cotangent, index, window).astype(jnp.float32) + (
      jnp.where(index != NO_GRADIENT, rows_cotangent[:, :, None, :], 0.0))
  return (g_cotangent.astype(dx_cotangent.dtype),
          np.zeros(index.shape, jax.dtypes.float0))


_scatter_bias_relu.defvjp(_scatter_bias_relu_fwd, _scatter_bias_relu_bwd)


def max_pool_bias_relu(x, bias, window: Tuple[int, int]):
  """relu(max_pool(x, window) + bias) (bias [C], added in float32, the
  result rounded to x's dtype), one pass each way; call only where
  `usable(x, window)`. Its index marks the windows the ReLU zeroes, so the
  backward pass writes x's gradient and sums the bias's in one pass.
  Under vmap the members, each with its own bias or all with one, fold
  into the batch.
  """
  window = tuple(int(w) for w in window)
  onednn_build.library()  # built and its custom calls registered
  if bias.shape != (x.shape[-1],):
    raise ValueError(f"max_pool_bias_relu: bias of shape {bias.shape} for "
                     f"{x.shape[-1]} channels (x {x.shape})")
  return _pool_bias_relu(_crop(x, window), bias, window)


def _crop(x, window):
  """x without the trailing rows and columns no window covers."""
  rows, cols = (x.shape[1] // window[0] * window[0],
                x.shape[2] // window[1] * window[1])
  if (rows, cols) != x.shape[1:3]:
    x = x[:, :rows, :cols, :]
  return x


def max_pool(x, window: Tuple[int, int]):
  """Max over non-overlapping windows of [B, H, W, C] (the trailing rows
  and columns a window does not fit are dropped, as 'valid' pooling does);
  call only where `usable(x, window)`."""
  window = tuple(int(w) for w in window)
  onednn_build.library()  # built and its custom calls registered
  return _pool(_crop(x, window), window)
