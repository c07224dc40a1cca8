"""oneDNN convolutions on the CPU, called from XLA as jax.ffi custom calls.

XLA:CPU's own convolutions are the slow part of a small CNN's train step on
a CPU (issue 12: on 2 cores a 3x3 32->64 convolution's forward, input and
kernel gradients take 8, 10 and 10+ ms at batch 128 against oneDNN's 4.6,
4.3 and 4.0 ms; oneDNN is what PyTorch runs on the CPU). onednn_build.py
compiles `native/onednn_conv.cc` against the oneDNN wheel on first use and
registers its three passes (forward, input gradient, kernel gradient) as
XLA:CPU custom calls; onednn_calls.py makes them vmappable and shardable,
this module a differentiable convolution. `conv_general_dilated` here has
`lax.conv_general_dilated`'s signature and is what `conv_impl='onednn'` (and
'auto' on the CPU) runs; everything around the convolutions stays in XLA.

Where oneDNN or a compiler is missing (onednn_build.unavailable_reason()),
`conv_general_dilated` runs XLA's convolution. Each pass of each convolution
(its geometry without the batch size) is checked on this machine before it
is used (onednn_verify.py): one that oneDNN cannot create on this CPU, or
that disagrees with a reference, runs as XLA's convolution instead.

Precision: float32 convolutions multiply in bfloat16 (float32 sums) where
JAX's matmul precision asks for it ('bfloat16', lax.Precision.DEFAULT) and
oneDNN has bf16 instructions here (onednn_bfloat16.py); otherwise in
float32 (XLA:CPU ignores the precision). See `conv_general_dilated` and
README "Matmul precision bfloat16".

Differentiation: reverse mode, to any order (each pass's VJP is made of the
other passes); no forward mode (jvp), as with any custom VJP. Under vmap,
members that share the kernel fold into one call's batch; otherwise they run
one after another. Under data parallelism (`jax.sharding`), each device
convolves its shard of the batch.
"""

import functools
from typing import Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from cnn_jax.conv import conv_im2col
from cnn_jax.conv import negative_padding
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_calls
from cnn_jax.conv import onednn_verify
from cnn_jax.conv.onednn_calls import Geometry

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# The custom-call targets onednn_build registers, one per pass.
_FORWARD = onednn_build.FORWARD
_BACKWARD_DATA = onednn_build.BACKWARD_DATA
_BACKWARD_WEIGHTS = onednn_build.BACKWARD_WEIGHTS


def supported(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
              dimension_numbers=None, lhs_dilation=None,
              feature_group_count: int = 1, batch_group_count: int = 1,
              dtype=jnp.float32) -> Optional[str]:
  """None if this convolution can run on oneDNN, else why it cannot.

  Channels-last input/output and a [*window, C_in, C_out] kernel (flax's
  layout), 1 to 3 spatial dims, float32 or bfloat16, no input dilation or
  groups. Whether oneDNN is installed is
  `onednn_build.unavailable_reason()`'s question.
  """
  reason = conv_im2col.supported(lhs_shape, rhs_shape, dimension_numbers,
                                 lhs_dilation, feature_group_count,
                                 batch_group_count)
  if reason is not None:
    return reason
  if jnp.dtype(dtype) not in DTYPES:
    return f"dtype {jnp.dtype(dtype).name} (oneDNN path: float32, bfloat16)"
  if 0 in tuple(lhs_shape) or 0 in tuple(rhs_shape):
    return f"an empty operand ({tuple(lhs_shape)}, {tuple(rhs_shape)})"
  return None


def _xla_pass(target: str, geometry: Geometry, a, b):
  """The same pass as XLA's convolution (or its transpose), in the operands'
  dtype: what runs where onednn_verify rejects oneDNN's primitive on this
  CPU."""
  in_sizes, window, strides, pads, dilations = geometry
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=strides, padding=pads,
      rhs_dilation=dilations,
      dimension_numbers=conv_im2col.channels_last_numbers(len(in_sizes) + 2))
  if target == _FORWARD:
    return conv(a, b)
  if target == _BACKWARD_DATA:
    x = jax.ShapeDtypeStruct((a.shape[0], *in_sizes, b.shape[-2]), a.dtype)
    return jax.linear_transpose(lambda x: conv(x, b), x)(a)[0]
  w = jax.ShapeDtypeStruct((*window, a.shape[-1], b.shape[-1]), a.dtype)
  return jax.linear_transpose(lambda w: conv(a, w), w)(b)[0]


def _checked_pass(target: str, geometry: Geometry, compute: str, a, b):
  """The pass on a and b cast to `compute`, its result in the wider of their
  dtypes: oneDNN's where onednn_verify accepts it on this CPU, else XLA's."""
  out_dtype = jnp.dtype(jnp.result_type(a, b)).name
  dtype = onednn_bfloat16.verified_dtype(target, compute, out_dtype)
  channels = ((a.shape[-1], b.shape[-1]) if target == _BACKWARD_WEIGHTS
              else (b.shape[-2], b.shape[-1]))
  a, b = a.astype(compute), b.astype(compute)
  if onednn_verify.rejection(target, geometry, channels, dtype) is None:
    # The forward and input-gradient passes write bfloat16, and XLA
    # widens the result inside whatever fusion reads it: oneDNN 3.2's
    # bfloat16 kernels with a float32 result ran at half speed (2-core
    # AMD EPYC Zen 5, 32x32, 64->64: forward 22 vs 11 ms, input gradient
    # 19 vs 12 ms). The kernel gradient, summed over the whole batch in
    # float32 anyway, is returned in float32 at no cost.
    return onednn_calls.pass_call(target, geometry, _pass_result(dtype))(
        a, b).astype(
        out_dtype)
  return _xla_pass(target, geometry, a, b).astype(out_dtype)


def _pass_result(dtype: str) -> str:
  """The custom call's result dtype for a pass of onednn_verify `dtype`."""
  return "float32" if dtype == onednn_verify.MIXED else dtype


# Each pass is linear in each operand, and each one's VJP is made of the
# other two, so reverse mode works to any order. `compute`: the dtype the
# pass multiplies in (operands are cast to it; the result keeps the wider
# of the operands' dtypes, so float32 convolutions computed in bfloat16
# return float32, and their residuals are kept as bfloat16 casts). Each
# cotangent is cast to its operand's dtype.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _forward(x, kernel, geometry, compute):
  return _checked_pass(_FORWARD, geometry, compute, x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_data(dy, kernel, geometry, compute):
  return _checked_pass(_BACKWARD_DATA, geometry, compute, dy, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_weights(x, dy, geometry, compute):
  return _checked_pass(_BACKWARD_WEIGHTS, geometry, compute, x, dy)


def _residuals(a, b, compute):
  """What a pass's VJP keeps of its operands: their casts to `compute`
  (half the memory for bfloat16 compute), and their dtypes, as empty arrays
  (residuals must be arrays; a cotangent takes its operand's dtype)."""
  return (a.astype(compute), b.astype(compute),
          (jnp.zeros(0, a.dtype), jnp.zeros(0, b.dtype)))


def _vjp_forward_rule(pass_fn):
  """The VJP's forward rule of one of the three passes."""
  def rule(a, b, geometry, compute):
    return pass_fn(a, b, geometry, compute), _residuals(a, b, compute)
  return rule


def _cotangents(residuals, da, db):
  """(da, db) in the dtypes of the operands they are cotangents of."""
  a_dtype, b_dtype = residuals[2]
  return da.astype(a_dtype.dtype), db.astype(b_dtype.dtype)


def _forward_bwd(geometry, compute, residuals, dy):
  x, kernel, _ = residuals
  return _cotangents(residuals,
                     _backward_data(dy, kernel, geometry, compute),
                     _backward_weights(x, dy, geometry, compute))


def _backward_data_bwd(geometry, compute, residuals, g):
  dy, kernel, _ = residuals
  return _cotangents(residuals, _forward(g, kernel, geometry, compute),
                     _backward_weights(g, dy, geometry, compute))


def _backward_weights_bwd(geometry, compute, residuals, g):
  x, dy, _ = residuals
  return _cotangents(residuals, _backward_data(dy, g, geometry, compute),
                     _forward(x, g, geometry, compute))


_forward.defvjp(_vjp_forward_rule(_forward), _forward_bwd)
_backward_data.defvjp(_vjp_forward_rule(_backward_data), _backward_data_bwd)
_backward_weights.defvjp(_vjp_forward_rule(_backward_weights),
                         _backward_weights_bwd)


def _subsampled(lhs, geometry: Geometry):
  """A strided 1x1 convolution as the stride-1 convolution of the pixels it
  reads: (lhs padded and subsampled in XLA, its new geometry).

  oneDNN 3.2's AVX2 kernel gradient of strided 1x1 convolutions (it
  subsamples internally) is wrong for fewer than 8 input channels on more
  than one thread: the ResNet shortcut's case. Subsampling here costs the
  same copy and leaves oneDNN a plain matrix multiply on every CPU.
  """
  _, window, strides, pads, _ = geometry
  n = len(window)
  out = onednn_verify.out_sizes(geometry)
  if any(lo or hi for lo, hi in pads):
    lhs = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
  lhs = lax.slice(lhs, (0,) * (n + 2),
                  (lhs.shape[0], *((m - 1) * s + 1 for m, s in zip(out, strides)),
                   lhs.shape[-1]), (1, *strides, 1))
  return lhs, (out, window, (1,) * n, ((0, 0),) * n, (1,) * n)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         keep_bfloat16=False):
  """`lax.conv_general_dilated` run by oneDNN on the CPU.

  Same arguments, result and gradients (up to float summation order).
  float32 convolutions multiply in bfloat16 with float32 sums where
  `precision`, or JAX's default matmul precision when it is None, asks for
  bfloat16, oneDNN has bf16 instructions on this CPU and accepts all three
  bfloat16 passes of this geometry (onednn_bfloat16.py); the forward and input-gradient results are
  rounded to bfloat16 once, the kernel gradient is not. Otherwise they run
  in float32, as XLA:CPU does whatever the precision. Convolutions
  oneDNN does not take (`supported`) or a machine without oneDNN
  (`onednn_build.unavailable_reason`) run `lax.conv_general_dilated`.
  Negative padding is a crop of the input first (negative_padding.py).
  With `keep_bfloat16`, a convolution computed in bfloat16 returns its
  bfloat16 result as it is (what a max-pool after it reads: a cheaper pass
  over half the bytes, and the same values).
  """
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  lhs, padding = negative_padding.crop(lhs, rhs.shape, padding, lhs_dilation,
                                       dimension_numbers)
  dtype = jnp.result_type(lhs, rhs)
  fallback = supported(lhs.shape, rhs.shape, dimension_numbers, lhs_dilation,
                       feature_group_count, batch_group_count, dtype)
  if fallback is None:
    window, strides, pads, dilations = conv_im2col.channels_last_geometry(
        lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
  if fallback is None:
    fallback = onednn_build.unavailable_reason()
  if fallback is not None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  lhs = lhs.astype(dtype)
  geometry = (tuple(lhs.shape[1:-1]), window, strides, pads, dilations)
  if all(k == 1 for k in window) and any(s > 1 for s in strides):
    lhs, geometry = _subsampled(lhs, geometry)
  compute = jnp.dtype(dtype).name
  if (compute == "float32" and onednn_bfloat16.bfloat16_requested(precision)
      and onednn_bfloat16.bfloat16_native()
      and onednn_bfloat16.runs_in_bfloat16(geometry, rhs.shape[-2:])):
    compute = "bfloat16"
  y = _forward(lhs, rhs.astype(dtype), geometry, compute)
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  elif keep_bfloat16 and compute == "bfloat16":
    # Exact (the float32 result is a widened bfloat16); XLA drops the pair
    # of conversions, and their transposes in the gradient.
    y = y.astype(jnp.bfloat16)
  return y
