"""Cross-correlation and true convolution on `jax.lax`.

Deep-learning "convolution" layers compute a cross-correlation,
`y[i] = sum_j x[i * s + j * d] k[j]`; the true convolution flips the kernel.
`cross_correlation` / `convolution` are the batched, multi-channel versions:
inputs channels-last `[B, *spatial, C]`, kernels `[*window, C_in, C_out]`
(flax's HWIO), for N = 1, 2 or 3 spatial dims. `correlate` / `convolve` are
the lecture versions for a plain signal with no batch or channel axes.
Padding, strides and dilation are resolved by geometry.py.
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from cnn_jax.conv import conv_impls
from cnn_jax.ops import geometry
from cnn_jax.ops.geometry import IntOrSeq
from cnn_jax.ops.geometry import Padding

# lax dimension numbers (lhs, rhs, out) for channels-last inputs and flax's
# [*window, C_in, C_out] kernels, keyed by the number of spatial dimensions.
_DIMENSION_NUMBERS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


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
  strides = geometry.to_tuple(stride, n, "stride")
  dilations = geometry.to_tuple(dilation, n, "dilation")
  pads = geometry.padding_pairs(padding, in_sizes, window, strides, dilations)
  geometry.check_output_sizes(in_sizes, window, strides, dilations, pads,
                              padding,
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
