"""Convolution passes as matrix multiplies (im2col), for XLA:CPU.

A channels-last convolution is a matrix multiply with the patch matrix

  patches[b, *o, (j, c)] = x_padded[b, *(o * s + j * d), c]    # T = prod(window)
  y = patches @ kernel.reshape(T * C_in, C_out)

and its gradients are two more:

  dkernel = patches^T @ dy
  dx      = col2im(dy @ kernel^T)        # the transpose of the slicing

The patch matrix is T times the size of the input, and writing it out to
memory costs more than XLA's own convolution on this kind of machine. So
every pass here runs over the batch in chunks (a `lax.scan`) small enough
for a chunk's patches to stay in the core's cache, and the custom VJP keeps
only (x, kernel) between the passes, never the patches.

Two modes (see `conv_general_dilated`):
  'im2col': all three passes as chunked matrix multiplies;
  'mixed':  forward and input gradient by XLA's convolution, kernel gradient
            as a chunked matrix multiply. XLA:CPU (jaxlib 0.10) runs the
            kernel gradient of a 2D float32 convolution through YNNPACK as a
            convolution with a [H, W] window, which is several times slower
            than its forward pass; the matrix multiply is not.

Same signature and numerics (up to float summation order) as
`lax.conv_general_dilated` for channels-last inputs ([B, *spatial, C]),
kernels [*window, C_in, C_out] (flax's layout) and outputs, any stride,
padding (also negative) and kernel dilation, 1 to 3 spatial dims and one
feature group. Other cases (input dilation, i.e. transposed convolution;
feature or batch groups; other layouts) are delegated to XLA; `supported`
says which. The custom VJP supports reverse-mode differentiation only
(`jax.grad`, `jax.vjp`); forward mode (`jax.jvp`) needs conv_impl='xla'.
"""

import functools
import itertools
import math
import os
from typing import Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp

MODES = ("im2col", "mixed")

# Bytes of patches per batch chunk: about what one core's L2 cache holds
# (2 MiB on the machines of experiments/bench_cpu.py). Measured on the MNIST
# CNN's 14x14x32 -> 64 layer: 4 images (0.9 MiB) per chunk ran the kernel
# gradient 2.3x faster than 128 at once.
_CHUNK_BYTES = 1 << 20


def channels_last_numbers(ndim: int) -> lax.ConvDimensionNumbers:
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
  if numbers != channels_last_numbers(ndim):
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


def _pad(x, pads):
  """Zero-pads (or, for negative pads, crops) the spatial dims of x."""
  return lax.pad(x, jnp.zeros((), x.dtype),
                 ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads)
                 + ((0, 0, 0),))


def _patches(x, window, strides, pads, dilations):
  """[B, *S, C] -> [B, *out, T * C], taps in the kernel's row-major order."""
  xp = _pad(x, pads)
  out = _out_sizes(x.shape[1:-1], window, strides, pads, dilations)
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
  """Transpose of `_patches`: adds each tap's slice back into [B, *S, C]."""
  c = x_shape[-1]
  padded = tuple(n + lo + hi for n, (lo, hi) in zip(x_shape[1:-1], pads))
  out = dpatches.shape[1:-1]
  zero = jnp.zeros((), dpatches.dtype)
  total = None
  for t, tap in enumerate(itertools.product(*(range(m) for m in window))):
    config = [(0, 0, 0)]
    for j, d, s, o, p in zip(tap, dilations, strides, out, padded):
      lo = j * d
      config.append((lo, p - (lo + s * (o - 1) + 1), s - 1))
    config.append((0, 0, 0))
    piece = lax.pad(dpatches[..., t * c:(t + 1) * c], zero, config)
    total = piece if total is None else total + piece
  # Drop the padding again (negative padding of the gradient: zeros).
  return _pad(total, tuple((-lo, -hi) for lo, hi in pads))


def _matmul(a, b, contract, precision, out_dtype):
  """dot_general over one contracted dim each, result in out_dtype.

  XLA:CPU multiplies bfloat16 into float32 only in YNNPACK, which skips
  matrix-vector and tiny products; those are computed in float32 here.
  """
  m = math.prod(a.shape) // a.shape[contract[0]]
  n = math.prod(b.shape) // b.shape[contract[1]]
  k = a.shape[contract[0]]
  if a.dtype != jnp.float32 and (min(m, n) == 1 or max(m, n, k) < 8):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  y = lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                      precision=precision, preferred_element_type=out_dtype)
  return y.astype(out_dtype)


def _chunks(batch: int, bytes_per_example: int, carry_bytes: int = 0) -> int:
  """Images per chunk: on the CPU the largest divisor of `batch` within
  _CHUNK_BYTES, but few enough chunks that re-reading a `carry_bytes` accumulator once
  per chunk costs at most a quarter of the patches' own traffic."""
  if jax.default_backend() != "cpu":
    return batch  # GPU/TPU matrix multiplies want the whole batch at once
  target = max(1, _CHUNK_BYTES // max(1, bytes_per_example))
  if carry_bytes:
    max_chunks = max(1, batch * bytes_per_example // (4 * carry_bytes))
    target = max(target, -(-batch // max_chunks))
  return max(d for d in range(1, min(batch, target) + 1) if batch % d == 0)


def _cores() -> int:
  """CPU cores this process may run on (the size of XLA's thread pool)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _patch_bytes(x_shape, kernel_shape, out_sizes, dtype):
  taps = math.prod(kernel_shape[:-2])
  return math.prod(out_sizes) * taps * x_shape[-1] * jnp.dtype(dtype).itemsize


def _batched(fn, xs, chunk):
  """Runs fn over the leading axis of every array in xs in chunks of `chunk`
  examples (a lax.scan), stacking the per-chunk results back to [B, ...]."""
  batch = xs[0].shape[0]
  if chunk == batch:
    return fn(*xs)
  split = [x.reshape(batch // chunk, chunk, *x.shape[1:]) for x in xs]
  _, ys = lax.scan(lambda carry, xs: (carry, fn(*xs)), None, split)
  return ys.reshape(batch, *ys.shape[2:])


def _forward(x, kernel, geometry):
  """y = patches(x) @ kernel, chunked over the batch."""
  strides, pads, dilations, precision = geometry
  n = x.ndim - 2
  window = kernel.shape[:n]
  kernel2d = kernel.reshape(-1, kernel.shape[-1])
  out = _out_sizes(x.shape[1:-1], window, strides, pads, dilations)

  def chunk_fn(xc):
    patches = _patches(xc, window, strides, pads, dilations)
    return _matmul(patches, kernel2d, (n + 1, 0), precision, x.dtype)

  chunk = _chunks(x.shape[0], _patch_bytes(x.shape, kernel.shape, out,
                                           x.dtype))
  return _batched(chunk_fn, (x,), chunk)


def _kernel_grad(x, dy, kernel_shape, geometry):
  """dkernel = patches(x)^T @ dy, accumulated over batch chunks in float32."""
  strides, pads, dilations, precision = geometry
  n = x.ndim - 2
  window = kernel_shape[:n]
  c_out = kernel_shape[-1]
  out = dy.shape[1:-1]

  width = math.prod(kernel_shape[:-1])  # T * C_in
  # Both operands are contracted over their rows, so XLA transposes one of
  # them; make it the narrower: [C_out, T * C_in] = dy^T @ patches when
  # dy is narrower (most layers), [T * C_in, C_out] = patches^T @ dy when the
  # patches are (few input channels, e.g. a network's first layer).
  patches_first = width < c_out

  def chunk_fn(xc, dyc):
    patches = _patches(xc, window, strides, pads, dilations)
    patches = patches.reshape(-1, width)
    dyc = dyc.reshape(-1, c_out)
    if patches_first:
      return _matmul(patches, dyc, (0, 0), precision, jnp.float32)
    return _matmul(dyc, patches, (0, 0), precision, jnp.float32)

  def finish(total):
    return (total if patches_first else total.T).reshape(kernel_shape)

  batch = x.shape[0]
  chunk = _chunks(batch, _patch_bytes(x.shape, kernel_shape, out, x.dtype),
                  carry_bytes=4 * math.prod(kernel_shape))
  num_chunks = batch // chunk
  if num_chunks == 1:
    return finish(chunk_fn(x, dy))
  # One scan per core over its share of the chunks: XLA:CPU runs independent
  # loops side by side, one loop's small matmuls one after the other.
  groups = max(g for g in range(1, min(_cores(), num_chunks) + 1)
               if num_chunks % g == 0)
  zeros = jnp.zeros((width, c_out) if patches_first else (c_out, width),
                    jnp.float32)

  def step(acc, xs):
    return acc + chunk_fn(*xs), None

  total = None
  for xg, dyg in zip(jnp.split(x, groups), jnp.split(dy, groups)):
    split = lambda a: a.reshape(num_chunks // groups, chunk, *a.shape[1:])
    partial, _ = lax.scan(step, zeros, (split(xg), split(dyg)))
    total = partial if total is None else total + partial
  return finish(total)


def _input_grad(dy, kernel, x_shape, geometry):
  """dx = col2im(dy @ kernel^T), chunked over the batch."""
  strides, pads, dilations, precision = geometry
  n = dy.ndim - 2
  window = kernel.shape[:n]
  kernel2d = kernel.reshape(-1, kernel.shape[-1])

  def chunk_fn(dyc):
    dpatches = _matmul(dyc, kernel2d, (n + 1, 1), precision, dy.dtype)
    return _col2im(dpatches, (dyc.shape[0], *x_shape[1:]), window, strides,
                   pads, dilations)

  chunk = _chunks(dy.shape[0], _patch_bytes(x_shape, kernel.shape,
                                            dy.shape[1:-1], dy.dtype))
  return _batched(chunk_fn, (dy,), chunk)


def _xla_conv(x, kernel, geometry):
  strides, pads, dilations, precision = geometry
  return lax.conv_general_dilated(
      x, kernel, strides, pads, rhs_dilation=dilations,
      dimension_numbers=channels_last_numbers(x.ndim), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, geometry, mode):
  if mode == "mixed":
    return _xla_conv(x, kernel, geometry)
  return _forward(x, kernel, geometry)


def _conv_fwd(x, kernel, geometry, mode):
  return _conv(x, kernel, geometry, mode), (x, kernel)


def _conv_bwd(geometry, mode, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  if mode == "mixed":
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, geometry), x)
    (dx,) = input_vjp(dy)
  else:
    dx = _input_grad(dy, kernel, x.shape, geometry)
  dkernel = _kernel_grad(x, dy, kernel.shape, geometry)
  return dx, dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def channels_last_geometry(lhs_shape, rhs_shape, window_strides, padding,
                           rhs_dilation=None):
  """(window, strides, pads, dilations) of a channels-last convolution
  (`supported` layouts), as tuples of ints; string padding ('SAME',
  'VALID') resolved to (low, high) pairs."""
  n = len(lhs_shape) - 2
  window = tuple(int(m) for m in rhs_shape[:n])
  strides = tuple(int(s) for s in window_strides)
  dilations = (1,) * n if rhs_dilation is None else tuple(
      int(d) for d in rhs_dilation)
  if isinstance(padding, str):
    effective = tuple(d * (m - 1) + 1 for m, d in zip(window, dilations))
    padding = lax.padtype_to_pads(lhs_shape[1:-1], effective, strides,
                                  padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return window, strides, pads, dilations


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         mode: str = "im2col"):
  """`lax.conv_general_dilated` with its passes as chunked matrix multiplies.

  `mode` is 'im2col' (forward, input and kernel gradients as matmuls) or
  'mixed' (only the kernel gradient). Unsupported cases (see `supported`)
  run `lax.conv_general_dilated` itself.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of: {', '.join(MODES)}")
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
  _, strides, pads, dilations = channels_last_geometry(
      lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
  dtype = jnp.result_type(lhs, rhs)
  if precision is not None and not isinstance(precision, (str, tuple)):
    precision = lax.Precision(precision)
  y = _conv(lhs.astype(dtype), rhs.astype(dtype),
            (strides, pads, dilations, precision), mode)
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  return y
