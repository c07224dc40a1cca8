"""Convolution as one matrix multiply (im2col by slicing), with its own VJP.

XLA:CPU's generic convolution runs a small CNN's layers several times slower
than its matrix multiply reaches on the same FLOPs (see
experiments/bench_cpu.py). Here a channels-last convolution is written as

  patches = concat_j(x_padded[:, j*d : ... : s, :])   # [B, *out, T * C_in]
  y = patches @ kernel.reshape(T * C_in, C_out)        # T = prod(window)

and its gradients as two more large matrix multiplies:

  dkernel = patches^T @ dy                  # patches recomputed, never stored
  dx      = col2im(dy @ kernel^T)           # shifted adds, fused by XLA

The custom VJP keeps only (x, kernel) alive between the passes, not the
T-times larger patch matrix, and puts the kernel gradient in one well-shaped
matmul instead of whatever autodiff of the slices would produce.

Same signature and numerics (up to float summation order) as
`lax.conv_general_dilated` for channels-last inputs ([B, *spatial, C]),
kernels [*window, C_in, C_out] (flax's layout) and outputs, any stride,
padding (also negative) and kernel dilation, 1 to 3 spatial dims and one
feature group. Other cases (input dilation, i.e. transposed convolution;
feature or batch groups; other layouts) are delegated to XLA; `supported`
says which.
"""

import functools
import itertools
import math
from typing import Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp

Pads = Tuple[Tuple[int, int], ...]


def _channels_last_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """(lhs, rhs, out) specs of [B, *S, C] x [*W, I, O] -> [B, *S, C]."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(
      lhs_spec=(0, ndim - 1) + spatial,
      rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
      out_spec=(0, ndim - 1) + spatial)


def supported(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
              dimension_numbers=None, lhs_dilation=None,
              feature_group_count: int = 1,
              batch_group_count: int = 1) -> Optional[str]:
  """None if `conv_general_dilated` runs as im2col, else why it falls back."""
  ndim = len(lhs_shape)
  if ndim not in (3, 4, 5):
    return f"{ndim - 2} spatial dims (im2col handles 1 to 3)"
  numbers = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape),
                                       dimension_numbers)
  if numbers != _channels_last_numbers(ndim):
    return (f"layout {numbers} is not channels-last input/output with a "
            "[*window, C_in, C_out] kernel")
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    return f"input dilation {tuple(lhs_dilation)} (transposed convolution)"
  if feature_group_count != 1:
    return f"feature_group_count={feature_group_count}"
  if batch_group_count != 1:
    return f"batch_group_count={batch_group_count}"
  return None


def _out_sizes(in_sizes, window, strides, pads, dilations):
  return tuple((n + lo + hi - d * (m - 1) - 1) // s + 1
               for n, m, s, (lo, hi), d in zip(in_sizes, window, strides, pads,
                                               dilations))


def _patches(x, window, strides, pads, dilations):
  """[B, *S, C] -> [B, *out, T * C], taps in the kernel's row-major order."""
  n = x.ndim - 2
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads)
               + ((0, 0, 0),))
  out = _out_sizes(x.shape[1:-1], window, strides, pads, dilations)
  if all(m == 1 for m in window):
    if all(s == 1 for s in strides):
      return xp
  taps = []
  for tap in itertools.product(*(range(m) for m in window)):
    start = tuple(j * d for j, d in zip(tap, dilations))
    limit = tuple(st + s * (o - 1) + 1
                  for st, s, o in zip(start, strides, out))
    taps.append(lax.slice(xp, (0, *start, 0),
                          (xp.shape[0], *limit, xp.shape[-1]),
                          (1, *strides, 1)))
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _col2im(dpatches, x_shape, window, strides, pads, dilations):
  """Transpose of `_patches`: sums each tap's slice back into [B, *S, C]."""
  n = len(window)
  c = x_shape[-1]
  in_sizes = x_shape[1:-1]
  padded = tuple(sz + lo + hi for sz, (lo, hi) in zip(in_sizes, pads))
  out = dpatches.shape[1:-1]
  zero = jnp.zeros((), dpatches.dtype)
  total = None
  for t, tap in enumerate(itertools.product(*(range(m) for m in window))):
    piece = dpatches[..., t * c:(t + 1) * c]
    config = [(0, 0, 0)]
    for j, d, s, o, p in zip(tap, dilations, strides, out, padded):
      lo = j * d
      hi = p - (lo + s * (o - 1) + 1)
      config.append((lo, hi, s - 1))
    config.append((0, 0, 0))
    piece = lax.pad(piece, zero, config)
    total = piece if total is None else total + piece
  # Drop the zero padding (negative padding pads the gradient with zeros).
  unpad = ((0, 0, 0),) + tuple((-lo, -hi, 0) for lo, hi in pads) + (
      (0, 0, 0),)
  del n
  return lax.pad(total, zero, unpad)


def _matmul(a, b, contract_a, contract_b, precision, preferred):
  return lax.dot_general(a, b, ((contract_a, contract_b), ((), ())),
                         precision=precision,
                         preferred_element_type=preferred)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x, kernel, strides, pads, dilations, precision, preferred):
  return _conv_fwd(x, kernel, strides, pads, dilations, precision,
                   preferred)[0]


def _conv_fwd(x, kernel, strides, pads, dilations, precision, preferred):
  n = x.ndim - 2
  window = kernel.shape[:n]
  patches = _patches(x, window, strides, pads, dilations)
  kernel2d = kernel.reshape(-1, kernel.shape[-1])
  y = _matmul(patches, kernel2d, (n + 1,), (0,), precision, preferred)
  return y, (x, kernel)


def _conv_bwd(strides, pads, dilations, precision, preferred, residuals, dy):
  del preferred
  x, kernel = residuals
  n = x.ndim - 2
  window = kernel.shape[:n]
  patches = _patches(x, window, strides, pads, dilations)
  batch_axes = tuple(range(n + 1))
  dkernel = _matmul(patches, dy.astype(patches.dtype), batch_axes, batch_axes,
                    precision, jnp.float32)
  dkernel = dkernel.reshape(kernel.shape).astype(kernel.dtype)
  kernel2d = kernel.reshape(-1, kernel.shape[-1])
  dpatches = _matmul(dy.astype(kernel.dtype), kernel2d, (n + 1,), (1,),
                     precision, jnp.float32).astype(x.dtype)
  dx = _col2im(dpatches, x.shape, window, strides, pads, dilations)
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` computed as im2col + matmul where supported.

  Unsupported cases (see `supported`) run `lax.conv_general_dilated` itself.
  """
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  reason = supported(lhs.shape, rhs.shape, dimension_numbers, lhs_dilation,
                     feature_group_count, batch_group_count)
  if reason is not None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  n = lhs.ndim - 2
  window = rhs.shape[:n]
  strides = tuple(int(s) for s in window_strides)
  dilations = (1,) * n if rhs_dilation is None else tuple(
      int(d) for d in rhs_dilation)
  if isinstance(padding, str):
    effective = tuple(d * (m - 1) + 1 for m, d in zip(window, dilations))
    pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], effective, strides,
                                     padding))
  else:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  dtype = jnp.result_type(lhs, rhs)
  if preferred_element_type is not None:
    preferred = jnp.dtype(preferred_element_type)
  else:
    preferred = None
  if precision is not None and not isinstance(precision, (str, tuple)):
    precision = lax.Precision(precision)
  return _conv(lhs.astype(dtype), rhs.astype(dtype), strides, pads, dilations,
               precision, preferred)
