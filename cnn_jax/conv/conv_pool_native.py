"""A network's first conv block as native XLA:CPU custom calls: a 3x3 or
5x5 convolution ('SAME', stride 1) of a float32 image with 1 or 3
channels, a 2x2 max-pool, a bias and a ReLU (layers.ConvReluMaxPool, the
MNIST CNN's conv1).

Such a convolution is cheap (9 products per output per input channel) and
its output is large: oneDNN wrote the MNIST CNN's [256, 28, 28, 32] map,
the pool read it, the pool's gradient wrote the same size again and the
kernel gradient read it (conv 1.2 ms, pool 1.4 ms, their gradients 0.9 +
1.2 ms of a ~31 ms bfloat16 train step; 2-core AMD EPYC Zen 4,
experiments/profile_cpu_step.py). native/conv_pool.cc never writes it:
the forward computes each window's four outputs in registers (float32
FMAs, 16 channels at a time), pools, adds the bias, applies the ReLU and
writes the pooled map (float32, or bfloat16 under bfloat16 matmul
precision: rounded once) and the window index (max_pool_native's, 255
where the ReLU zeroes it); the backward reads the pooled gradient and the
index and writes each example's kernel and bias gradient sums (XLA adds
the examples: the same sums in the same order on any number of threads).
The input gradient (for a first layer never used, so XLA drops it) is
XLA's: the pool's scatter and the convolution's transpose. In the same
profile the block then took 1.1 ms forward and 1.0 ms backward, and the
step 0.84x its time before (median of 5 alternated pairs of processes,
14 calls of 39 steps each).

`conv_max_pool_bias_relu(x, kernel, bias, dtype)` is the differentiable
op: reverse mode through the custom calls, and derivatives of any order
(their own derivatives are XLA's convolutions). `usable` says whether it
runs here. Under vmap the members fold into the batch when they share the
kernel, else run one after another (lax.map); under data parallelism each
device takes its shard of the batch and XLA all-reduces the gradient sums.
"""

import functools

import jax
from jax import custom_batching
from jax import lax
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import max_pool_native
from cnn_jax.conv import onednn_build

KERNEL_SIZES = (3, 5)  # what native/conv_pool.cc is compiled for
IN_CHANNELS = (1, 3)
LANES = 16  # output channels are processed 16 at a time
_WINDOW = (2, 2)
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def usable(x_shape, kernel_shape, strides, padding, window, pool_stride,
           dtype) -> bool:
  """Whether the native block computes conv(x, kernel; strides, padding)
  -> max-pool(window, pool_stride) here: the CPU backend on an AVX-512 CPU
  (max_pool_native.cpu_supported), float32, x [B, H >= 2, W >= 2, Cin]
  with Cin in IN_CHANNELS, a square kernel of a size in KERNEL_SIZES with
  a multiple of 16 output channels, stride 1, 'SAME' padding, 2x2 windows
  with stride 2."""
  as_pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
  if len(x_shape) != 4 or len(kernel_shape) != 4:
    return False
  size = kernel_shape[0]
  same = (isinstance(padding, str) and padding.upper() == "SAME") or (
      not isinstance(padding, str)
      and tuple(map(tuple, padding)) == ((size // 2, size // 2),) * 2)
  return (jax.default_backend() == "cpu"
          and jnp.dtype(dtype) == jnp.float32
          and kernel_shape[1] == size and size in KERNEL_SIZES
          and kernel_shape[2] == x_shape[3] and x_shape[3] in IN_CHANNELS
          and kernel_shape[3] % LANES == 0
          and x_shape[1] >= 2 and x_shape[2] >= 2
          and as_pair(strides) == (1, 1) and same
          and as_pair(window) == _WINDOW
          and as_pair(_WINDOW if pool_stride is None else pool_stride)
          == _WINDOW
          and max_pool_native.cpu_supported())


def _local_forward(dtype, x, kernel, bias_rows):
  shape = (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, kernel.shape[-1])
  return jax.ffi.ffi_call(onednn_build.CONV_MAX_POOL_FORWARD, (
      jax.ShapeDtypeStruct(shape, dtype),
      jax.ShapeDtypeStruct(shape, jnp.uint8)))(x, kernel, bias_rows)


def _local_backward(kernel_shape, x, g, index):
  batch = x.shape[0]
  return jax.ffi.ffi_call(onednn_build.CONV_MAX_POOL_BACKWARD, (
      jax.ShapeDtypeStruct((batch, *kernel_shape), jnp.float32),
      jax.ShapeDtypeStruct((batch, kernel_shape[-1]), jnp.float32)))(
          x, g, index)


# Per example but the kernel (operand 1 of the forward), which every device
# holds whole.
_forward_call = max_pool_native.per_example(
    _local_forward, 2, "b h w i, k l i c, b c -> b y x c, b y x c",
    shared=(1,))
_backward_call = max_pool_native.per_example(
    _local_backward, 2, "b h w i, b y x c, b y x c -> b k l i c, b c")


@functools.lru_cache(maxsize=None)
def _forward(dtype):
  """(x, kernel, bias rows [B, C]) -> (y, index), vmappable: members with
  one kernel fold into the batch, members with their own run in turn."""

  @custom_batching.custom_vmap
  def run(x, kernel, bias_rows):
    return _forward_call(dtype, x, kernel, bias_rows)

  @run.def_vmap
  def _rule(axis_size, in_batched, x, kernel, bias_rows):
    members = lambda a, batched: (
        a if batched else jnp.broadcast_to(a, (axis_size, *a.shape)))
    x, bias_rows = members(x, in_batched[0]), members(bias_rows, in_batched[2])
    if in_batched[1]:  # each member's own kernel: one call per member
      return jax.lax.map(lambda a: run(*a), (x, kernel, bias_rows)), (True,
                                                                      True)
    fold = lambda a: a.reshape(axis_size * a.shape[1], *a.shape[2:])
    results = run(fold(x), kernel, fold(bias_rows))
    unfold = lambda a: a.reshape(axis_size, -1, *a.shape[1:])
    return tuple(map(unfold, results)), (True, True)

  return run


@functools.lru_cache(maxsize=None)
def _backward(kernel_shape):
  """(x, g, index) -> (each example's kernel and bias gradient), vmappable
  (every operand is per example)."""
  return max_pool_native.members_in_the_batch(
      functools.partial(_backward_call, kernel_shape))


def _conv(x, kernel):
  """The block's convolution in XLA (float32, full precision)."""
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=_DIMENSIONS,
                                  precision=lax.Precision.HIGHEST)


def _pooled_region(a):
  """The rows and columns of a full-resolution map the 2x2 windows cover."""
  return a[:, :a.shape[1] // 2 * 2, :a.shape[2] // 2 * 2, :]


def _pick(full, index):
  """Each window's indexed element of a full-resolution map (0 where the
  index is max_pool_native.NO_GRADIENT)."""
  return max_pool_native._pick(_pooled_region(full), index, _WINDOW)  # pylint: disable=protected-access


def _spread(g, index, shape):
  """_pick's transpose: each pooled gradient at its window's indexed
  element of a zero map of `shape` (XLA ops, differentiable)."""
  zeros = jnp.zeros(shape, g.dtype)
  return jax.vjp(lambda full: _pick(full, index), zeros)[1](g)[0]


# The forward kernel, differentiable to any order: with the index fixed the
# block is linear in each of x, kernel and bias where the ReLU passes.
@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _block_and_index(x, kernel, bias, dtype):
  rows = jnp.broadcast_to(bias.astype(jnp.float32),
                          (x.shape[0], kernel.shape[-1]))
  return _forward(dtype)(x, kernel, rows)


@_block_and_index.defjvp
def _block_and_index_jvp(dtype, primals, tangents):
  (x, kernel, bias), (x_dot, kernel_dot, bias_dot) = primals, tangents
  y, index = _block_and_index(x, kernel, bias, dtype)
  conv_dot = _conv(x_dot, kernel) + _conv(x, kernel_dot)
  y_dot = jnp.where(index != max_pool_native.NO_GRADIENT,
                    _pick(conv_dot, index) + bias_dot, 0.0)
  return (y, index), (y_dot.astype(dtype),
                      np.zeros(index.shape, jax.dtypes.float0))


def _reference_gradients(x, g, index, kernel_shape):
  """What the backward kernel computes, in XLA ops: each example's kernel
  and bias gradient."""
  g = g.astype(jnp.float32)
  dy = _spread(g, index, (*x.shape[:3], kernel_shape[-1]))
  kernel = jnp.zeros(kernel_shape, jnp.float32)

  def one(xb, dyb):
    return jax.vjp(lambda k: _conv(xb[None], k), kernel)[1](dyb[None])[0]

  dw = jax.vmap(one)(x, dy)
  db = jnp.sum(jnp.where(index != max_pool_native.NO_GRADIENT, g, 0.0),
               axis=(1, 2))
  return dw, db


# The backward kernel, with its own VJP (the reference's) for second order.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gradients(x, g, index, kernel_shape):
  return _backward(kernel_shape)(x, g, index)


def _gradients_fwd(x, g, index, kernel_shape):
  return _gradients(x, g, index, kernel_shape), (x, g, index)


def _gradients_bwd(kernel_shape, residuals, cotangents):
  x, g, index = residuals
  _, vjp = jax.vjp(
      lambda x, g: _reference_gradients(x, g, index, kernel_shape), x, g)
  dx, dg = vjp(cotangents)
  return dx, dg.astype(g.dtype), np.zeros(index.shape, jax.dtypes.float0)


_gradients.defvjp(_gradients_fwd, _gradients_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _block(x, kernel, bias, dtype):
  return _block_and_index(x, kernel, bias, dtype)[0]


def _block_fwd(x, kernel, bias, dtype):
  y, index = _block_and_index(x, kernel, bias, dtype)
  return y, (x, kernel, index)


def _block_bwd(dtype, residuals, g):
  del dtype
  x, kernel, index = residuals
  dw_rows, db_rows = _gradients(x, g, index, kernel.shape)
  # x's gradient: the pooled gradient spread to the convolution's output,
  # through the convolution's transpose (dropped by XLA where unused).
  dy = _spread(g.astype(jnp.float32), index,
               (*x.shape[:3], kernel.shape[-1]))
  dx = jax.vjp(lambda x: _conv(x, kernel), x)[1](dy)[0]
  return dx, jnp.sum(dw_rows, axis=0), jnp.sum(db_rows, axis=0)


_block.defvjp(_block_fwd, _block_bwd)


def conv_max_pool_bias_relu(x, kernel, bias, dtype=jnp.float32):
  """relu(max_pool(conv(x, kernel), 2) + bias), the convolution 'SAME'
  with stride 1, in float32 arithmetic, the result rounded once to `dtype`
  (float32 or bfloat16); call only where `usable`. x [B, H, W, Cin]
  float32, kernel [K, K, Cin, C] and bias [C] float32; the result
  [B, H // 2, W // 2, C]."""
  onednn_build.library()  # built and its custom calls registered
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"conv_max_pool_bias_relu: dtype {dtype} (float32 or "
                     "bfloat16)")
  if bias.shape != (kernel.shape[-1],):
    raise ValueError(f"conv_max_pool_bias_relu: bias of shape {bias.shape} "
                     f"for a kernel of shape {kernel.shape}")
  return _block(x.astype(jnp.float32), kernel.astype(jnp.float32),
                bias.astype(jnp.float32), dtype)
