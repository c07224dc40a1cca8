"""Which code runs a convolution: XLA's own, oneDNN's, or matrix multiplies.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature, result and
gradients and takes `impl`:
  'xla':    lax.conv_general_dilated, XLA's own convolution (cuDNN on GPU).
  'onednn': on the CPU, oneDNN's convolutions as XLA custom calls
            (cnn_jax/conv/onednn.py): the forward and both gradients.
  'im2col': forward and both gradients as matrix multiplies, batch-chunked
            on the CPU (cnn_jax/conv/conv_im2col.py).
  'mixed':  XLA's forward and input gradient, im2col's kernel gradient.
  'winograd': on AVX-512 CPUs, float32 3x3 'SAME' stride-1 layers of
            at least 64 channels on maps of at least 4x4 with at least 64
            4x4 tiles in the batch (not under bfloat16 matmul precision
            where the CPU has bf16 dot products), as Winograd's F(4x4, 3x3)
            (cnn_jax/conv/winograd.py: 1.6-2.4x oneDNN's speed on
            ResNet-18's such layers at batch 128); every other
            convolution as 'onednn'.
  'auto':   'xla' on GPU/TPU; on the CPU 'winograd' where oneDNN is
            installed and takes the convolution (the MNIST CNN's train
            step at 1.3-1.7x PyTorch's in experiments/bench_cpu.py), else the
            fastest of 'xla', 'im2col' and 'mixed' for the layer's shape
            and dtype, from the same benchmark.
'im2col' and 'mixed' fall back to 'xla' where im2col does not apply
(conv_im2col.supported); 'onednn' falls back to 'xla' off the CPU, where
oneDNN does not take the convolution (onednn.supported) or is not
available here (onednn_build.unavailable_reason). `layers.Conv` takes its
convolution from `conv_fn`, so parameters keep nn.Conv's layout whichever
implementation runs.
"""

import contextlib
import functools
import math
import os
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from cnn_jax.conv import conv_im2col
from cnn_jax.conv import negative_padding
from cnn_jax.conv import onednn
from cnn_jax.conv import onednn_build
from cnn_jax.conv import winograd

CONV_IMPLS = ("auto", "xla", "onednn", "winograd", "im2col", "mixed")

# Read when a convolution is traced, so a jitted function keeps the choice it
# was compiled with. Set from the environment (CNN_JAX_CONV_IMPL=xla) or with
# set_default_conv_impl().
_default_conv_impl = os.environ.get("CNN_JAX_CONV_IMPL", "auto")


def check_conv_impl(impl: str, name: str = "conv_impl") -> str:
  """`impl` if it is one of CONV_IMPLS, else a ValueError naming `name`."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"{name}={impl!r} is not one of: {', '.join(CONV_IMPLS)}")
  return impl


def set_default_conv_impl(impl: str) -> None:
  """Sets the implementation used where a layer or call does not name one.

  Affects functions traced afterwards; already-compiled functions keep theirs.
  """
  global _default_conv_impl
  _default_conv_impl = check_conv_impl(impl)


def default_conv_impl() -> str:
  """The process default: 'auto' unless CNN_JAX_CONV_IMPL or
  `set_default_conv_impl` says otherwise."""
  return check_conv_impl(_default_conv_impl, "CNN_JAX_CONV_IMPL")


@contextlib.contextmanager
def default_conv_impl_scope(impl: Optional[str]):
  """The process default is `impl` inside the block (None: left as is).

  Wrap the body of a function to be jitted in it to choose the convolutions
  it is traced with, without touching what other functions trace.
  """
  global _default_conv_impl
  previous = _default_conv_impl
  if impl is not None:
    set_default_conv_impl(impl)
  try:
    yield
  finally:
    _default_conv_impl = previous


def _cpu_conv_impl(lhs_shape, rhs_shape, dtype) -> str:
  """The fastest implementation on XLA:CPU for a channels-last convolution.

  Measured with experiments/bench_cpu.py and single-pass timings (jaxlib
  0.10, AVX-512 cores): XLA's forward and input-gradient convolutions
  (YNNPACK for float32 2D) beat im2col everywhere, by 1.2-3x. Its kernel
  gradient is a convolution with an [H_out, W_out] window, slow on large
  maps, where the chunked matmul wins (batch 128, 14x14, 32->64 channels:
  2.2x; 28x28, 1->32 in the whole train step: 1.05-1.2x; batch 16, 32x32,
  64->64: 1.9x, 3->64: 1.1x; a 1x1 stride-2 projection to 16x16: 3.9x). On
  small maps XLA's is as fast or faster (8x8, 256->256: 0.8x). The same
  holds for bfloat16, which XLA:CPU convolves no faster than float32. Only
  2D was measured; 1D/3D keep XLA.
  """
  del rhs_shape, dtype
  if len(lhs_shape) != 4:
    return "xla"
  return "mixed" if math.prod(lhs_shape[1:-1]) >= 196 else "xla"


def resolve_conv_impl(impl: Optional[str], lhs_shape, rhs_shape,
                      dimension_numbers=None, lhs_dilation=None,
                      feature_group_count: int = 1,
                      batch_group_count: int = 1,
                      dtype=jnp.float32,
                      backend: Optional[str] = None) -> str:
  """'xla', 'onednn', 'im2col' or 'mixed': what
  `conv_general_dilated(..., impl=impl)` runs for these shapes ('onednn'
  also where 'auto' and 'winograd' run Winograd's transforms on oneDNN's
  CPU path: `winograd.usable` decides that from the strides and padding
  too, in `conv_general_dilated`).

  `impl=None` means `default_conv_impl()`; 'im2col' and 'mixed' resolve to
  'xla' where im2col does not apply (`conv_im2col.supported`), 'onednn' and
  'winograd' to 'xla' off the CPU or where oneDNN cannot run it; 'auto'
  picks by backend (default: `jax.default_backend()`), shape and dtype.
  """
  impl = check_conv_impl(default_conv_impl() if impl is None else impl)
  if impl == "xla":
    return "xla"
  if conv_im2col.supported(lhs_shape, rhs_shape, dimension_numbers,
                           lhs_dilation, feature_group_count,
                           batch_group_count) is not None:
    return "xla"
  backend = jax.default_backend() if backend is None else backend
  if impl in ("onednn", "winograd", "auto") and backend == "cpu":
    if (onednn.supported(lhs_shape, rhs_shape, dimension_numbers,
                         lhs_dilation, feature_group_count, batch_group_count,
                         dtype) is None and onednn_build.available()):
      return "onednn"
  if impl in ("onednn", "winograd"):
    return "xla"
  if impl != "auto":
    return impl
  if backend == "cpu":
    return _cpu_conv_impl(tuple(lhs_shape), tuple(rhs_shape),
                          jnp.dtype(dtype))
  return "xla"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         impl: Optional[str] = None,
                         keep_bfloat16: bool = False):
  """`lax.conv_general_dilated` with a choice of implementation.

  Same arguments, result and gradients as `lax.conv_general_dilated` (up to
  float summation order); `impl` is one of CONV_IMPLS or None (the process
  default), resolved by `resolve_conv_impl`. 'onednn', 'im2col' and 'mixed'
  have a custom VJP: reverse-mode differentiation only. This is the function
  `layers.Conv` hands to `flax.linen.Conv`, so parameters keep nn.Conv's
  layout whichever implementation runs. Negative padding is a crop of the
  input first (negative_padding.py: XLA:CPU gets some of it wrong).
  `keep_bfloat16`: where oneDNN multiplies a float32 convolution in
  bfloat16, its result stays bfloat16 (onednn.conv_general_dilated).
  """
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  lhs, padding = negative_padding.crop(lhs, rhs.shape, padding, lhs_dilation,
                                       dimension_numbers)
  chosen = resolve_conv_impl(impl, lhs.shape, rhs.shape, dimension_numbers,
                             lhs_dilation, feature_group_count,
                             batch_group_count,
                             dtype=jnp.result_type(lhs, rhs))
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  if chosen == "xla":
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                    **kwargs)
  requested = default_conv_impl() if impl is None else impl
  if (chosen == "onednn" and requested in ("auto", "winograd")
      and winograd.usable(lhs.shape, rhs.shape, window_strides, padding,
                          dtype=jnp.result_type(lhs, rhs), **kwargs)):
    return winograd.conv(lhs, rhs)
  if chosen == "onednn":
    return onednn.conv_general_dilated(lhs, rhs, window_strides, padding,
                                       keep_bfloat16=keep_bfloat16, **kwargs)
  return conv_im2col.conv_general_dilated(lhs, rhs, window_strides, padding,
                                          mode=chosen, **kwargs)


@functools.lru_cache(maxsize=None)
def conv_fn(impl: Optional[str] = None, keep_bfloat16: bool = False):
  """`conv_general_dilated` with `impl` (and `keep_bfloat16`) bound: a
  drop-in for `lax.conv_general_dilated` (flax.linen.Conv's
  `conv_general_dilated`).

  Cached, so modules built with the same arguments compare equal.
  """
  if impl is not None:
    check_conv_impl(impl)
  return functools.partial(conv_general_dilated, impl=impl,
                           keep_bfloat16=keep_bfloat16)
