"""Which float32 oneDNN convolutions multiply in bfloat16: where JAX's matmul
precision asks for it and this CPU has bf16 dot-product instructions
(onednn.py; config.train.matmul_precision, README "Matmul precision
bfloat16").
"""

import jax
from jax import lax

from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify

# oneDNN's instruction sets with bf16 dot products (AVX-512-BF16, AMX):
# there a bfloat16 convolution runs 1.9-4x its float32 one (2-core AMD EPYC
# Zen 5: README "Matmul precision bfloat16"); without them oneDNN emulates
# bf16 (AVX-512) or cannot create it (AVX2).
BFLOAT16_ISAS = ("avx512_core_bf16", "avx512_core_fp16", "avx512_core_amx",
                 "avx512_core_amx_fp16")


def bfloat16_native() -> bool:
  """Whether oneDNN computes bfloat16 convolutions with bf16 dot-product
  instructions on this CPU (after ONEDNN_MAX_CPU_ISA)."""
  return onednn_build.available() and onednn_build.cpu_isa() in BFLOAT16_ISAS


def bfloat16_requested(precision=None) -> bool:
  """Whether `precision` (lax.conv_general_dilated's; None: JAX's
  jax_default_matmul_precision at trace time) allows float32 operands to be
  multiplied in bfloat16: 'bfloat16' / 'default' / lax.Precision.DEFAULT
  for both operands (JAX's "fastest, bfloat16" level) or the BF16_BF16_F32
  algorithm preset."""
  if precision is None:
    precision = jax.config.jax_default_matmul_precision
    if precision is None:
      return False
  if isinstance(precision, (list, tuple)):
    return len(precision) == 2 and all(bfloat16_requested(p)
                                       for p in precision)
  if isinstance(precision, lax.DotAlgorithmPreset):
    return precision == lax.DotAlgorithmPreset.BF16_BF16_F32
  if isinstance(precision, str):
    if precision in lax.DotAlgorithmPreset.__members__:
      return precision == "BF16_BF16_F32"
    precision = lax.Precision(precision)
  return precision == lax.Precision.DEFAULT


def verified_dtype(target: str, compute: str, out_dtype: str) -> str:
  """onednn_verify's dtype of a pass that multiplies in `compute` and
  returns `out_dtype`."""
  if compute != out_dtype and target == onednn_build.BACKWARD_WEIGHTS:
    return onednn_verify.MIXED
  return compute


def runs_in_bfloat16(geometry, channels) -> bool:
  """Whether oneDNN runs all three passes of this float32 convolution in
  bfloat16 here (else it runs in float32, every pass: bfloat16 was
  allowed, not asked for at any cost)."""
  return all(onednn_verify.rejection(
      target, geometry, channels,
      verified_dtype(target, "bfloat16", "float32"),
      instead="the convolution runs in float32") is None
             for target in onednn_verify.PASSES)
