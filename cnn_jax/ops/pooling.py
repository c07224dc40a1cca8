"""Max and average pooling, windowed and global, on channels-last inputs
`[B, *spatial, C]` with 1 to 3 spatial dims.

Windows, strides and padding follow geometry.py (stride defaults to the
window). Non-overlapping unpadded windows, the usual `max_pool(x, 2)`, take
a reshape path that XLA fuses with the layer before; other windows use
`lax.reduce_window`.
"""

import functools
import math
from typing import Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import max_pool_native
from cnn_jax.ops import geometry
from cnn_jax.ops.geometry import IntOrSeq
from cnn_jax.ops.geometry import Padding


def _pool_geometry(x, window, stride, padding, name):
  """Checks a pooling call; returns (window, strides, pads)."""
  n = x.ndim - 2
  if n not in geometry.SPATIAL_DIMS:
    raise ValueError(
        f"{name}: x must be [B, *spatial, C] with 1 to 3 spatial dims, got "
        f"shape {x.shape}")
  window = geometry.to_tuple(window, n, "window")
  strides = window if stride is None else geometry.to_tuple(stride, n, "stride")
  in_sizes = x.shape[1:-1]
  pads = geometry.padding_pairs(padding, in_sizes, window, strides, (1,) * n)
  geometry.check_output_sizes(in_sizes, window, strides, (1,) * n, pads,
                              padding, f"{name} window")
  return window, strides, pads


def _is_tiling(window, strides, pads) -> bool:
  """Non-overlapping, unpadded windows: the reshape path applies."""
  return tuple(strides) == tuple(window) and all(p == (0, 0) for p in pads)


def _tile_windows(x: jax.Array, window: Sequence[int]):
  """[B, *spatial, C] -> ([B, n1 // w1, w1, ..., C], window axes).

  Drops the trailing `n % w` rows/columns that 'valid' pooling never reads.
  """
  in_sizes = x.shape[1:-1]
  if any(sz % w for sz, w in zip(in_sizes, window)):
    crop = tuple(slice(0, (sz // w) * w) for sz, w in zip(in_sizes, window))
    x = x[(slice(None),) + crop + (slice(None),)]
  shape = [x.shape[0]]
  for sz, w in zip(in_sizes, window):
    shape += [sz // w, w]
  shape.append(x.shape[-1])
  axes = tuple(2 + 2 * i for i in range(len(window)))
  return x.reshape(shape), axes


def _window_elements(tiles: jax.Array, axes: Sequence[int]):
  """The elements of each window of `_tile_windows`' output, in row-major
  window order (the tie order of the max's gradient): a list of
  prod(window) arrays [B, n1 // w1, ..., C]."""
  elements = [tiles]
  for axis in sorted(axes, reverse=True):
    # Axes split last to first, each index outermost: row-major order.
    elements = [lax.index_in_dim(e, i, axis, keepdims=False)
                for i in range(tiles.shape[axis]) for e in elements]
  return elements


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tiled_max(tiles: jax.Array, axes: Tuple[int, ...],
               window: Tuple[int, ...]) -> jax.Array:
  del window  # tiles.shape on `axes`, for the gradient (it sees no tiles)
  # An elementwise max of the window's elements, not a reduce: XLA fuses it
  # with the producer (bias, ReLU) into one pass over the activations.
  return functools.reduce(jnp.maximum, _window_elements(tiles, axes))


def _first_max_index(elements, pooled):
  """Per window, the row-major index of its first element equal to the max,
  or len(elements) where none is (a NaN window): int8 [B, *pooled, C]
  (int32 for windows of 127 elements or more)."""
  n = len(elements)
  dtype = jnp.int8 if n < 127 else jnp.int32
  index = jnp.full(pooled.shape, n, dtype)
  for k in reversed(range(n)):
    index = jnp.where(elements[k] == pooled, jnp.asarray(k, dtype), index)
  return index


def _tiled_max_fwd(tiles, axes, window):
  # The max and, as PyTorch's max-pooling keeps, the index of the element
  # that passes the gradient on, both from one pass over the tiles (XLA may
  # instead recompute the index inside the gradient's fusion).
  elements = _window_elements(tiles, axes)
  pooled = functools.reduce(jnp.maximum, elements)
  return pooled, _first_max_index(elements, pooled)


def _tiled_max_bwd(axes, window, index, g):
  # Each window's gradient goes to its first maximal element in row-major
  # order, as lax.reduce_window's select-and-scatter and PyTorch route it:
  # one elementwise pass that reads g and the index at the pooled resolution
  # and writes the input-sized gradient once. (The even split between tied
  # maxima used before counted the ties from the saved tiles; its one-pass
  # form came out wrong in XLA's program for a batch sharded over devices
  # at --xla_backend_optimization_level=0, which the tests run.)
  # The row-major position of each element in its window, [1, .., w1, ..]
  # on the tiles' axes.
  position = np.zeros([1] * (g.ndim + len(axes)), np.int32)
  for axis, size in zip(axes, window):
    shape = [1] * position.ndim
    shape[axis] = size
    position = position * size + np.arange(size).reshape(shape)
  index = jnp.expand_dims(index, axes)
  return (jnp.where(position.astype(index.dtype) == index,
                    jnp.expand_dims(g, axes), jnp.zeros((), g.dtype)),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def _reduce_window(x, init, reducer, window, strides, pads):
  return lax.reduce_window(
      x, init, reducer,
      window_dimensions=(1, *window, 1),
      window_strides=(1, *strides, 1),
      padding=((0, 0), *pads, (0, 0)))


def max_pool(x: jax.Array, window: IntOrSeq, stride: Optional[IntOrSeq] = None,
             padding: Padding = "valid") -> jax.Array:
  """Max over windows of each channel.

  Non-overlapping unpadded windows (the usual `max_pool(x, 2)`) are computed
  as a reshape and an elementwise max over each window's elements, with a
  custom gradient that is one fused elementwise pass; XLA:CPU runs both
  several times faster than `lax.reduce_window` and its select-and-scatter
  gradient, and fuses the max with a preceding bias/ReLU. Both give a
  window's gradient to its first maximal element (row-major), as PyTorch
  does, so tied maxima get the same gradient on either path. On an AVX-512
  CPU, float32 and bfloat16 [B, H, W, C] maps pool in native kernels
  instead (conv/max_pool_native.py: one pass each way, the window's index
  kept as a uint8; the MNIST CNN's bfloat16 train step 35.6 -> 32.0 ms on
  a 2-core AMD EPYC Zen 4), with the same values and gradients.

  Args:
    x: `[B, *spatial, C]`, 1 to 3 spatial dims.
    window: int or one per spatial dim.
    stride: int or one per spatial dim; defaults to `window`.
    padding: as `cross_correlation`; padded elements are never the max.

  Returns:
    `[B, *spatial_out, C]` with `spatial_out` from `output_size`.
  """
  x = jnp.asarray(x)
  window, strides, pads = _pool_geometry(x, window, stride, padding,
                                         "max_pool")
  if _is_tiling(window, strides, pads):
    if max_pool_native.usable(x, window):
      # The CPU's one-pass kernels (conv/max_pool_native.py): the same
      # values and gradients.
      return max_pool_native.max_pool(x, window)
    tiles, axes = _tile_windows(x, window)
    if jnp.issubdtype(x.dtype, jnp.inexact):
      window = tuple(tiles.shape[a] for a in axes)
      return _tiled_max(tiles, axes, window)
    return jnp.max(tiles, axis=axes)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    init = -jnp.inf
  else:
    init = jnp.iinfo(x.dtype).min
  # A numpy (concrete) init value: lax.reduce_window then picks its
  # differentiable max/add primitives; a jnp.array is a tracer under jit and
  # falls back to the generic reducer, which has no gradient.
  return _reduce_window(x, np.array(init, x.dtype), lax.max, window, strides,
                        pads)


def avg_pool(x: jax.Array, window: IntOrSeq, stride: Optional[IntOrSeq] = None,
             padding: Padding = "valid",
             count_include_pad: bool = False) -> jax.Array:
  """Mean over windows of each channel.

  Args:
    x: `[B, *spatial, C]`, 1 to 3 spatial dims; integers are averaged in
      float32.
    window: int or one per spatial dim.
    stride: int or one per spatial dim; defaults to `window`.
    padding: as `cross_correlation`.
    count_include_pad: if False (default) a window at the border is divided
      by the number of real elements it covers; if True by the full window
      size, as if the padding were zeros.

  Returns:
    `[B, *spatial_out, C]`.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.float32)
  window, strides, pads = _pool_geometry(x, window, stride, padding,
                                         "avg_pool")
  if _is_tiling(window, strides, pads):
    tiles, axes = _tile_windows(x, window)
    return jnp.mean(tiles, axis=axes)
  zero = np.array(0, x.dtype)  # concrete: see max_pool
  sums = _reduce_window(x, zero, lax.add, window, strides, pads)
  if count_include_pad:
    return sums / math.prod(window)
  # Counts depend only on the geometry; one channel of ones broadcasts.
  ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
  counts = _reduce_window(ones, zero, lax.add, window, strides, pads)
  return sums / counts


def _check_global(x, name):
  x = jnp.asarray(x)
  if x.ndim - 2 not in geometry.SPATIAL_DIMS:
    raise ValueError(
        f"{name}: x must be [B, *spatial, C] with 1 to 3 spatial dims, got "
        f"shape {x.shape}")
  return x, tuple(range(1, x.ndim - 1))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over all spatial positions: `[B, *spatial, C]` -> `[B, C]`."""
  x, axes = _check_global(x, "global_avg_pool")
  return jnp.mean(x, axis=axes)


def max_pool_bias_relu(x: jax.Array, bias: jax.Array, window: IntOrSeq,
                       stride: Optional[IntOrSeq] = None,
                       padding: Padding = "valid") -> jax.Array:
  """relu(max_pool(x) + bias): a conv block's pool, bias and ReLU, pooling
  first (layers.ConvReluMaxPool).

  The bias [C] is added in float32 and the result rounded to x's dtype
  (for a bfloat16 x, a convolution multiplied in bfloat16, one rounding of
  the float32 sums). On an AVX-512 CPU, 2-D tiling windows run as one
  native pass each way (conv/max_pool_native.py: the bias and ReLU inside
  the pool's kernel, the ReLU's zeros marked in the pool's index, so the
  backward pass writes x's gradient and sums the bias's in one pass),
  elsewhere as max_pool and XLA's elementwise ops: the same values and
  gradients.
  """
  x = jnp.asarray(x)
  window, strides, pads = _pool_geometry(x, window, stride, padding,
                                         "max_pool_bias_relu")
  if bias.shape != (x.shape[-1],):
    raise ValueError(f"max_pool_bias_relu: bias of shape {bias.shape} for "
                     f"x of shape {x.shape} ({x.shape[-1]} channels)")
  if _is_tiling(window, strides, pads) and max_pool_native.usable(x, window):
    return max_pool_native.max_pool_bias_relu(x, bias, window)
  y = max_pool(x, window, stride, padding).astype(jnp.float32)
  return jax.nn.relu(y + bias.astype(jnp.float32)).astype(x.dtype)


def global_max_pool(x: jax.Array) -> jax.Array:
  """Max over all spatial positions: `[B, *spatial, C]` -> `[B, C]`."""
  x, axes = _check_global(x, "global_max_pool")
  return jnp.max(x, axis=axes)
