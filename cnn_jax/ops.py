"""Convolution, cross-correlation and pooling primitives on `jax.lax`.

Layouts follow flax: inputs are channels-last `[B, *spatial, C]` and kernels
are `[*window, C_in, C_out]` (HWIO), for N = 1, 2 or 3 spatial dimensions.

Deep-learning "convolution" layers compute a cross-correlation,
`y[i] = sum_j x[i * s + j * d] k[j]`; the true convolution flips the kernel.
`cross_correlation` / `convolution` are the batched, multi-channel versions;
`correlate` / `convolve` are the lecture versions for a plain signal with no
batch or channel axes.

Padding is `'valid'` (none), `'same'` (output `ceil(n / s)`, split as XLA/TF
SAME: the extra element goes on the high side), `'full'` (`m_eff - 1` on each
side, every partial overlap), an int, or a sequence with one int or
`(lo, hi)` pair per spatial dimension.
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import conv_impls

IntOrSeq = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]

_PADDING_NAMES = ("valid", "same", "full")

# lax dimension numbers (lhs, rhs, out) for channels-last inputs and flax's
# [*window, C_in, C_out] kernels, keyed by the number of spatial dimensions.
_DIMENSION_NUMBERS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _to_tuple(value: IntOrSeq, n: int, name: str) -> Tuple[int, ...]:
  """Broadcasts an int to `n` ints, or checks a sequence has `n` of them."""
  if isinstance(value, (int, np.integer)):
    values = (int(value),) * n
  else:
    values = tuple(int(v) for v in value)
    if len(values) != n:
      raise ValueError(
          f"{name}={value!r} has {len(values)} entries but the input has "
          f"{n} spatial dimension(s)")
  if any(v < 1 for v in values):
    raise ValueError(f"{name}={value!r} must be positive")
  return values


def _dim_padding(padding, n: int, m: int, stride: int, dilation: int,
                 name: str) -> Tuple[int, int]:
  """(lo, hi) padding of one spatial dim: input length n, window length m."""
  m_eff = dilation * (m - 1) + 1
  if isinstance(padding, str):
    mode = padding.lower()
    if mode == "valid":
      return (0, 0)
    if mode == "full":
      return (m_eff - 1, m_eff - 1)
    if mode == "same":
      # As XLA/TF SAME: just enough padding for ceil(n / s) outputs.
      total = max((-(-n // stride) - 1) * stride + m_eff - n, 0)
      return (total // 2, total - total // 2)
    raise ValueError(
        f"{name}={padding!r} is not one of: {', '.join(_PADDING_NAMES)}, "
        "an int, or (lo, hi) pairs")
  if isinstance(padding, (int, np.integer)):
    pair = (int(padding), int(padding))
  else:
    pair = tuple(padding)
    if len(pair) != 2 or not all(
        isinstance(p, (int, np.integer)) for p in pair):
      raise ValueError(
          f"{name}={padding!r}: each spatial dimension needs an int or a "
          "(lo, hi) pair of ints")
    pair = (int(pair[0]), int(pair[1]))
  if min(pair) < 0:
    raise ValueError(f"{name}={padding!r} must not be negative")
  return pair


def _padding_pairs(padding: Padding, in_sizes: Sequence[int],
                   window: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int],
                   name: str = "padding") -> Tuple[Tuple[int, int], ...]:
  """Resolves `padding` to one (lo, hi) pair per spatial dimension."""
  n = len(in_sizes)
  if isinstance(padding, (str, int, np.integer)):
    per_dim = (padding,) * n
  else:
    per_dim = tuple(padding)
    # One spatial dim given as a bare (lo, hi) pair rather than [(lo, hi)].
    if n == 1 and len(per_dim) == 2 and all(
        isinstance(p, (int, np.integer)) for p in per_dim):
      per_dim = (per_dim,)
    if len(per_dim) != n:
      raise ValueError(
          f"{name}={padding!r} has {len(per_dim)} entries but the input has "
          f"{n} spatial dimension(s)")
  return tuple(
      _dim_padding(p, sz, m, s, d, name)
      for p, sz, m, s, d in zip(per_dim, in_sizes, window, strides, dilations))


def _output_sizes(in_sizes, window, strides, dilations, pads):
  return tuple(
      (n + lo + hi - (d * (m - 1) + 1)) // s + 1
      for n, m, s, d, (lo, hi) in zip(in_sizes, window, strides, dilations,
                                      pads))


def _check_output_sizes(in_sizes, window, strides, dilations, pads, padding,
                        what: str):
  out = _output_sizes(in_sizes, window, strides, dilations, pads)
  if min(out) < 1:
    m_eff = tuple(d * (m - 1) + 1 for m, d in zip(window, dilations))
    raise ValueError(
        f"{what} {tuple(window)} (dilated extent {m_eff}) is larger than the "
        f"padded input: spatial shape {tuple(in_sizes)}, padding={padding!r} "
        f"-> {pads}, output would be {out}")
  return out


def output_size(n: int, m: int, padding: Union[str, int, Tuple[int, int]]
                = "valid", stride: int = 1, dilation: int = 1) -> int:
  """Output length of a convolution or pooling along one spatial dimension.

  `floor((n + p_lo + p_hi - m_eff) / s) + 1` with `m_eff = d * (m - 1) + 1`;
  `'same'` gives `ceil(n / s)`.

  Args:
    n: input length.
    m: window (kernel) length, before dilation.
    padding: `'valid'`, `'same'`, `'full'`, an int p (both sides) or a
      `(lo, hi)` pair.
    stride: step between windows.
    dilation: spacing between kernel taps.

  Returns:
    The number of output positions (at least 1).

  Raises:
    ValueError: for non-positive sizes or a window that does not fit.
  """
  for name, value in (("n", n), ("m", m), ("stride", stride),
                      ("dilation", dilation)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"output_size: {name}={value!r} must be a positive int")
  pads = _padding_pairs(padding, (n,), (m,), (stride,), (dilation,))
  (out,) = _check_output_sizes((n,), (m,), (stride,), (dilation,), pads,
                               padding, "window")
  return out


def _compute_dtype(*arrays):
  # lax.conv needs one floating dtype for both operands; integer signals
  # (as in the lecture examples) are computed in float32.
  dtype = jnp.result_type(*arrays)
  return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32


def cross_correlation(x: jax.Array, kernel: jax.Array, *,
                      stride: IntOrSeq = 1, padding: Padding = "valid",
                      dilation: IntOrSeq = 1, feature_group_count: int = 1,
                      precision: Optional[lax.PrecisionLike] = None,
                      impl: Optional[str] = None) -> jax.Array:
  """Batched multi-channel cross-correlation (what conv layers compute).

  `y[b, i, o] = sum_{j, c} x[b, i * s + j * d, c] * kernel[j, c, o]`, with
  `i`, `j` multi-indices over the N spatial dims and `x` zero-padded.

  Args:
    x: input `[B, *spatial, C_in]`, N = 1, 2 or 3 spatial dims.
    kernel: `[*window, C_in // feature_group_count, C_out]` (flax layout).
    stride: int or one int per spatial dim.
    padding: `'valid'`, `'same'`, `'full'`, an int, or one int or `(lo, hi)`
      pair per spatial dim.
    dilation: kernel dilation, int or one per spatial dim.
    feature_group_count: channel groups (C_in for depthwise convolution).
    precision: passed to `lax.conv_general_dilated`; `'highest'` avoids
      reduced-precision (TF32/bf16) passes on GPU/TPU.
    impl: 'auto', 'xla', 'im2col', 'mixed' or None (the process default);
      see `conv_impls.conv_general_dilated`.

  Returns:
    `[B, *spatial_out, C_out]`, `spatial_out` given by `output_size`; float32
    for integer inputs, otherwise the promoted input dtype.
  """
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  n = x.ndim - 2
  if n not in _DIMENSION_NUMBERS:
    raise ValueError(
        f"x must be [B, *spatial, C] with 1 to 3 spatial dims, got shape "
        f"{x.shape}")
  if kernel.ndim != x.ndim:
    raise ValueError(
        f"kernel must be [*window, C_in, C_out] with {n} spatial dims to match "
        f"x of shape {x.shape}, got kernel rank {kernel.ndim} "
        f"(shape {kernel.shape})")
  groups = int(feature_group_count)
  c_in, c_out = x.shape[-1], kernel.shape[-1]
  if groups < 1 or c_in % groups or c_out % groups:
    raise ValueError(
        f"feature_group_count={feature_group_count} must divide C_in={c_in} "
        f"and C_out={c_out}")
  if kernel.shape[-2] * groups != c_in:
    raise ValueError(
        f"kernel C_in={kernel.shape[-2]} (shape {kernel.shape}) times "
        f"feature_group_count={groups} does not match x C_in={c_in} "
        f"(shape {x.shape})")
  in_sizes = x.shape[1:-1]
  window = kernel.shape[:-2]
  strides = _to_tuple(stride, n, "stride")
  dilations = _to_tuple(dilation, n, "dilation")
  pads = _padding_pairs(padding, in_sizes, window, strides, dilations)
  _check_output_sizes(in_sizes, window, strides, dilations, pads, padding,
                      f"kernel window (kernel shape {kernel.shape})")
  dtype = _compute_dtype(x, kernel)
  return conv_impls.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype),
      window_strides=strides,
      padding=pads,
      rhs_dilation=dilations,
      dimension_numbers=_DIMENSION_NUMBERS[n],
      feature_group_count=groups,
      precision=precision,
      impl=impl)


def _flip_spatial(kernel: jax.Array, n: int) -> jax.Array:
  return kernel[(slice(None, None, -1),) * n]


def convolution(x: jax.Array, kernel: jax.Array, *, stride: IntOrSeq = 1,
                padding: Padding = "valid", dilation: IntOrSeq = 1,
                feature_group_count: int = 1,
                precision: Optional[lax.PrecisionLike] = None) -> jax.Array:
  """True convolution: `cross_correlation` with the kernel flipped spatially.

  Same arguments and shapes as `cross_correlation`: x `[B, *spatial, C_in]`,
  kernel `[*window, C_in // feature_group_count, C_out]`, returns
  `[B, *spatial_out, C_out]`.
  """
  kernel = jnp.asarray(kernel)
  n = kernel.ndim - 2
  return cross_correlation(
      x, _flip_spatial(kernel, n) if n >= 1 else kernel, stride=stride,
      padding=padding, dilation=dilation,
      feature_group_count=feature_group_count, precision=precision)


def _signal_to_batched(x, k, name):
  x = jnp.asarray(x)
  k = jnp.asarray(k)
  if x.ndim not in _DIMENSION_NUMBERS:
    raise ValueError(
        f"{name}: x must have 1 to 3 dims (no batch/channel axes), got shape "
        f"{x.shape}")
  if k.ndim != x.ndim:
    raise ValueError(
        f"{name}: k must have the same rank as x, got k shape {k.shape} for "
        f"x shape {x.shape}")
  return x[None, ..., None], k[..., None, None]


def correlate(x: jax.Array, k: jax.Array, *, stride: IntOrSeq = 1,
              padding: Padding = "valid", dilation: IntOrSeq = 1) -> jax.Array:
  """Cross-correlation of a plain signal: `y[i] = sum_j x[i * s + j * d] k[j]`.

  Args:
    x: signal `[*spatial]`, 1 to 3 dims, no batch or channel axes.
    k: kernel `[*window]`, same rank as x.
    stride: int or one per dim.
    padding: as `cross_correlation`.
    dilation: int or one per dim.

  Returns:
    `[*spatial_out]` in float32 for integer inputs. Computed at the highest
    precision, so small integer examples come out exact on any backend.
  """
  xb, kb = _signal_to_batched(x, k, "correlate")
  y = cross_correlation(xb, kb, stride=stride, padding=padding,
                        dilation=dilation, precision=lax.Precision.HIGHEST)
  return y[0, ..., 0]


def convolve(x: jax.Array, k: jax.Array, *, stride: IntOrSeq = 1,
             padding: Padding = "valid", dilation: IntOrSeq = 1) -> jax.Array:
  """True convolution of a plain signal: `correlate` with `k` flipped.

  x `[*spatial]` and k `[*window]` of equal rank 1 to 3; returns
  `[*spatial_out]`. With `padding='full'` or `'valid'` and stride 1 this is
  `scipy.signal.convolve` in the same mode.
  """
  xb, kb = _signal_to_batched(x, k, "convolve")
  y = convolution(xb, kb, stride=stride, padding=padding, dilation=dilation,
                  precision=lax.Precision.HIGHEST)
  return y[0, ..., 0]


def _pool_geometry(x, window, stride, padding, name):
  """Checks a pooling call; returns (window, strides, pads)."""
  n = x.ndim - 2
  if n not in _DIMENSION_NUMBERS:
    raise ValueError(
        f"{name}: x must be [B, *spatial, C] with 1 to 3 spatial dims, got "
        f"shape {x.shape}")
  window = _to_tuple(window, n, "window")
  strides = window if stride is None else _to_tuple(stride, n, "stride")
  in_sizes = x.shape[1:-1]
  pads = _padding_pairs(padding, in_sizes, window, strides, (1,) * n)
  _check_output_sizes(in_sizes, window, strides, (1,) * n, pads, padding,
                      f"{name} window")
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
  window order: a list of prod(window) arrays [B, n1 // w1, ..., C]."""
  elements = [tiles]
  for axis in sorted(axes, reverse=True):
    elements = [lax.index_in_dim(e, i, axis, keepdims=False)
                for e in elements for i in range(tiles.shape[axis])]
  return elements


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(tiles: jax.Array, axes: Tuple[int, ...]) -> jax.Array:
  # An elementwise max of the window's elements, not a reduce: XLA fuses it
  # with the producer (bias, ReLU) into one pass over the activations.
  return functools.reduce(jnp.maximum, _window_elements(tiles, axes))


def _tiled_max_fwd(tiles, axes):
  pooled = _tiled_max(tiles, axes)
  return pooled, (tiles, pooled)


def _tiled_max_bwd(axes, residuals, g):
  # Tied maxima share the window's gradient evenly. Written elementwise (the
  # tie count as a sum over the window's elements, not a reduce) so the whole
  # gradient is one fused pass that writes the input-sized result once.
  tiles, pooled = residuals
  count = functools.reduce(
      jnp.add, [(e == pooled).astype(g.dtype)
                for e in _window_elements(tiles, axes)])
  share = jnp.expand_dims(g / count, axes)
  is_max = tiles == jnp.expand_dims(pooled, axes)
  return (jnp.where(is_max, share, jnp.zeros((), g.dtype)),)


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
  gradient, and fuses the max with a preceding bias/ReLU. The two differ
  only for tied maxima: the reshape path splits the gradient evenly between
  the tied elements, reduce_window gives it all to the first; both sum to the
  same.

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
    tiles, axes = _tile_windows(x, window)
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return _tiled_max(tiles, axes)
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
  if x.ndim - 2 not in _DIMENSION_NUMBERS:
    raise ValueError(
        f"{name}: x must be [B, *spatial, C] with 1 to 3 spatial dims, got "
        f"shape {x.shape}")
  return x, tuple(range(1, x.ndim - 1))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over all spatial positions: `[B, *spatial, C]` -> `[B, C]`."""
  x, axes = _check_global(x, "global_avg_pool")
  return jnp.mean(x, axis=axes)


def global_max_pool(x: jax.Array) -> jax.Array:
  """Max over all spatial positions: `[B, *spatial, C]` -> `[B, C]`."""
  x, axes = _check_global(x, "global_max_pool")
  return jnp.max(x, axis=axes)
