"""Building blocks shared by the model families.

Every model builds its convolutions from `Conv` here, so the convolution
implementation (XLA's generic kernel or an im2col matmul) is chosen in one
place while the parameter layout stays that of `flax.linen.Conv` (kernel
[*window, C_in, C_out], bias [C_out]), which keeps checkpoints and imported
pretrained weights interchangeable.

Shapes are channels-last throughout: [B, *spatial, C] with 1, 2 or 3 spatial
axes ([B, T, C], [B, H, W, C], [B, T, H, W, C]).
"""

import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnn_jax import ops
from cnn_jax.conv import conv_impls
from cnn_jax.conv import conv_pool_native
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_dense


class Conv(nn.Conv):
  """`flax.linen.Conv` computed by `conv_impls.conv_general_dilated`.

  Same fields, parameters (kernel [*window, C_in, C_out], bias [C_out]) and
  results as nn.Conv, plus `conv_impl`: 'auto', 'xla', 'im2col', or None for
  the process default (`conv_impls.default_conv_impl()`, read at trace time). An
  explicitly passed `conv_general_dilated` still wins.
  """

  conv_impl: Optional[str] = None

  def __post_init__(self):
    if self.conv_general_dilated is None and (
        self.conv_general_dilated_cls is None):
      object.__setattr__(self, "conv_general_dilated",
                         conv_impls.conv_fn(self.conv_impl))
    super().__post_init__()


class Dense(nn.Dense):
  """`flax.linen.Dense` whose product runs `onednn_dense.dot_general`: on
  the CPU, under bfloat16 matmul precision or for bfloat16 layers, oneDNN's
  bfloat16 matmul where this CPU has bf16 instructions; XLA's dot
  elsewhere. Same fields, parameters (kernel [C_in, features], bias) and
  initial values as nn.Dense. An explicitly passed `dot_general` still
  wins."""

  def __post_init__(self):
    if self.dot_general is None and self.dot_general_cls is None:
      object.__setattr__(self, "dot_general", onednn_dense.dot_general)
    super().__post_init__()


class ConvReluMaxPool(nn.Module):
  """Conv (with bias) -> ReLU -> `ops.max_pool(window, pool_stride)`,
  computed as conv -> max-pool -> bias -> ReLU.

  The parameters are those of a `Conv` with this module's name (kernel
  [*kernel_size, C_in, features] and bias [features], the same
  initialisers and random draws), so checkpoints and pretrained weights do
  not change. Adding a channel's bias and the ReLU are monotone, in floating
  point too (rounding is monotone), so both commute with the max and the
  output is the same, bit for bit. Pooling first runs the bias, the ReLU
  and their gradients on the pooled maps, and the max-pool's gradient, then
  the only full-size elementwise pass of the backward, is written once, in
  the convolution's compute dtype: the MNIST CNN's bf16 train step on a
  2-core AMD EPYC Zen 5 went from 26.9 to 21.5 ms. (Which element of a
  window gets the gradient differs only where adding the bias rounds two
  different maxima to one value: the textbook order then picks the first,
  this one the larger.) The pool, bias and ReLU are one op
  (ops.max_pool_bias_relu; one native pass each way on AVX-512 CPUs).

  Under bfloat16 matmul precision, where oneDNN multiplies the convolution
  in bfloat16, the block's output is bfloat16: the float32 sums rounded
  once, which is what the next convolution or dense layer reads, so no
  conversion runs in between either way.
  """

  features: int
  kernel_size: Sequence[int]
  window: Union[int, Sequence[int]] = 2
  pool_stride: Optional[Union[int, Sequence[int]]] = None  # None: window
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "SAME"
  kernel_init: Callable = nn.linear.default_kernel_init
  dtype: Any = jnp.float32
  conv_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    kernel_size = tuple(self.kernel_size)
    kernel_shape = (*kernel_size, x.shape[-1], self.features)
    if self._first_block_natively(x, kernel_shape):
      # The whole block in one native pass each way (a first layer's few
      # input channels: conv/conv_pool_native.py); the same parameters,
      # created in the same order with the same initialisers.
      kernel = self.param("kernel", self.kernel_init, kernel_shape,
                          jnp.float32)
      bias = self.param("bias", nn.initializers.zeros_init(),
                        (self.features,), jnp.float32)
      multiplies_in_bfloat16 = (onednn_bfloat16.bfloat16_requested()
                                and onednn_bfloat16.bfloat16_native())
      return conv_pool_native.conv_max_pool_bias_relu(
          x, kernel, bias,
          jnp.bfloat16 if multiplies_in_bfloat16 else jnp.float32)
    # A convolution that oneDNN multiplies in bfloat16 hands the max-pool
    # its bfloat16 result (conv_impls.conv_fn's keep_bfloat16): the pool
    # reads half the bytes and writes its gradient in bfloat16, where the
    # convolution's gradient wants it; the values are the same.
    conv = Conv(self.features, self.kernel_size, self.strides,
                padding=self.padding, use_bias=False,
                kernel_init=self.kernel_init, dtype=self.dtype,
                conv_general_dilated=conv_impls.conv_fn(self.conv_impl,
                                                        keep_bfloat16=True))
    nn.share_scope(self, conv)  # kernel and bias side by side, as in Conv
    y = conv(x)
    dtype = jnp.result_type(x, jnp.float32) if self.dtype is None else (
        self.dtype)
    # Created after the kernel, as nn.Conv does: the same initial values.
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                      jnp.float32)
    # Pool, bias and ReLU in one native pass each way on AVX-512 CPUs. A
    # bfloat16 convolution result (conv_fn's keep_bfloat16) gives a
    # bfloat16 block output, rounded once from float32 sums: what the
    # next convolution or dense layer, multiplying in bfloat16, reads.
    y = ops.max_pool_bias_relu(y, bias.astype(dtype), self.window,
                               self.pool_stride)
    return y if y.dtype == jnp.bfloat16 else y.astype(dtype)

  def _first_block_natively(self, x, kernel_shape) -> bool:
    """Whether conv_pool_native runs this block: a float32 block whose
    convolution would run on oneDNN (conv_impl 'auto' or 'onednn' on the
    CPU) and whose shapes its kernels take."""
    if self.dtype != jnp.float32 or jnp.dtype(x.dtype) != jnp.float32:
      return False
    if not conv_pool_native.usable(x.shape, kernel_shape, self.strides,
                                   self.padding, self.window,
                                   self.pool_stride, jnp.float32):
      return False
    return conv_impls.resolve_conv_impl(
        self.conv_impl, x.shape, kernel_shape,
        ("NHWC", "HWIO", "NHWC")) == "onednn"


# torch's BatchNorm defaults: its momentum=0.1 weights the new batch, flax's
# momentum weights the old running average, hence 0.9. (torch updates the
# running variance with the unbiased batch variance, flax with the biased one;
# the difference is a factor n/(n-1) on statistics, never on parameters.)
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

# torchvision initialises ResNet/VGG convolutions with kaiming_normal_
# (mode='fan_out', nonlinearity='relu'): an untruncated normal with std
# sqrt(2 / fan_out).
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_input(model: str, x, axes: str = "HW",
                min_size: Union[int, Sequence[int]] = 1,
                multiple_of: int = 1, kind: str = "images") -> None:
  """Raises ValueError naming `model` unless `x` is [B, *axes, C] and big enough.

  Checking at the top of `__call__` turns a too-small input into a message
  such as "ResNet50 expects images [B, H, W, C] with H, W >= 32, got (2, 8, 8, 3)"
  instead of an XLA error about a negative dimension deep inside the network.

  Args:
    model: name shown in the message, e.g. "ResNet50".
    x: the input array (only its shape is read).
    axes: one letter per spatial axis, e.g. "T", "HW", "THW".
    min_size: smallest allowed size, one int for all axes or one per axis.
    multiple_of: each spatial size must be divisible by this.
    kind: what the input is, e.g. "images", "time series", "videos".
  """
  shape = tuple(x.shape)
  mins = ((min_size,) * len(axes) if isinstance(min_size, int)
          else tuple(min_size))
  layout = "[B, " + ", ".join(axes) + ", C]"
  conditions = []
  # Group neighbouring axes with the same minimum: "T >= 8 and H, W >= 16".
  start = 0
  for end in range(1, len(axes) + 1):
    if end == len(axes) or mins[end] != mins[start]:
      if mins[start] > 1:
        conditions.append(", ".join(axes[start:end]) + f" >= {mins[start]}")
      start = end
  if multiple_of > 1:
    conditions.append(", ".join(axes) + f" divisible by {multiple_of}")
  ok = (len(shape) == len(axes) + 2 and
        all(n >= m and n % multiple_of == 0
            for n, m in zip(shape[1:-1], mins)))
  if not ok:
    where = " with " + " and ".join(conditions) if conditions else ""
    raise ValueError(f"{model} expects {kind} {layout}{where}, got {shape}")


def _adaptive_avg_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] averaging weights with torch's AdaptiveAvgPool bins.

  Bin i covers [floor(i * n / m), ceil((i + 1) * n / m)); bins overlap or
  repeat pixels when size_out does not divide size_in (or exceeds it).
  """
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    lo = (i * size_in) // size_out
    hi = -((-(i + 1) * size_in) // size_out)
    weights[i, lo:hi] = 1.0 / (hi - lo)
  return weights


def adaptive_avg_pool(x, output_size: Sequence[int]):
  """torch's AdaptiveAvgPool2d: [B, H, W, C] -> [B, *output_size, C].

  AlexNet and VGG pool to a fixed 6x6 / 7x7 grid so their classifier has the
  same size for any input resolution; at 224x224 the pool is the identity.
  Written as two small matmuls with the bin-averaging matrices.
  """
  out_h, out_w = output_size
  _, h, w, _ = x.shape
  if (h, w) == (out_h, out_w):
    return x
  rows = jnp.asarray(_adaptive_avg_matrix(h, out_h), x.dtype)
  cols = jnp.asarray(_adaptive_avg_matrix(w, out_w), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x)


class ConvBNAct(nn.Module):
  """Conv (no bias: BN's shift replaces it) -> BatchNorm -> activation.

  Works for 1D/2D/3D inputs [B, *spatial, C_in] -> [B, *spatial', features];
  `kernel_size` is one int for every spatial axis or a tuple, padding 'SAME'.
  """

  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  activation: Optional[Callable] = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    ndim = x.ndim - 2
    kernel = ((self.kernel_size,) * ndim if isinstance(self.kernel_size, int)
              else tuple(self.kernel_size))
    strides = ((self.strides,) * ndim if isinstance(self.strides, int)
               else tuple(self.strides))
    x = Conv(self.features, kernel, strides, padding="SAME", use_bias=False,
             dtype=self.dtype, name="conv")(x)
    x = BatchNorm(use_running_average=not train, dtype=self.dtype,
                  name="bn")(x)
    return x if self.activation is None else self.activation(x)
