"""U-Net (Ronneberger et al., 2015) for 2D segmentation, with 'SAME' padding.

Encoder: `depth` levels of (conv3x3-BN-ReLU) x2 then maxpool 2, channels
features, 2 * features, ...; a bottleneck double conv at features * 2**depth;
decoder: upsample 2x halving the channels, concatenate the encoder output of
the same level (the skip connection), double conv; a 1x1 conv gives
per-pixel logits. Padded convs (the paper's are unpadded and crop the skips)
keep the output the size of the input, so H, W must be divisible by
2**depth for the skips to line up.

With features=64, depth=4 and transposed-conv upsampling this is the layout
of the widely used milesial/Pytorch-UNet (bias-free convs before BN).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers

UPSAMPLE_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Module):
  """(conv3x3-BN-ReLU) x2: [B, H, W, C] -> [B, H, W, features]."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = functools.partial(layers.ConvBNAct, self.features, 3,
                              dtype=self.dtype)
    x = block(name="conv_bn_relu1")(x, train)
    return block(name="conv_bn_relu2")(x, train)


class TransposedConv2x(nn.Module):
  """Transposed conv with a 2x2 kernel and stride 2: [B, H, W, C] -> [B, 2H, 2W, features].

  The 2x2 windows of the output do not overlap, so this is exactly a 1x1
  conv to 4 * features channels followed by depth-to-space: written that way
  it goes through `layers.Conv` like every other convolution. Parameters:
  4 * C * features weights + features biases, as torch's
  ConvTranspose2d(kernel_size=2, stride=2), whose weight W [C, features, 2, 2]
  is `conv/kernel` [1, 1, C, (2, 2, features)] after moving the features axis
  last: y[2i + a, 2j + b] = x[i, j] @ W[:, :, a, b] + bias.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    y = layers.Conv(4 * self.features, (1, 1), use_bias=False,
                    dtype=self.dtype, name="conv")(x)
    # [B, H, W, (dy, dx, C)] -> [B, H, dy, W, dx, C] -> [B, 2H, 2W, C]
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, 2 * h, 2 * w, self.features)
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return y + bias.astype(self.dtype)


class UNet(nn.Module):
  """Input [B, H, W, C] with H, W divisible by 2**depth; output logits [B, H, W, num_classes].

  `upsample='transpose'` learns the upsampling (TransposedConv2x);
  `'bilinear'` resizes and then halves the channels with a 1x1 conv.
  """

  num_classes: int = 2
  features: int = 64
  depth: int = 4
  upsample: str = "transpose"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.upsample not in UPSAMPLE_MODES:
      raise ValueError(f"UNet upsample={self.upsample!r} is not one of: "
                       f"{', '.join(UPSAMPLE_MODES)}")
    layers.check_input("UNet", x, "HW", multiple_of=2**self.depth)
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = DoubleConv(self.features * 2**level, dtype=self.dtype,
                     name=f"down{level + 1}")(x, train)
      skips.append(x)
      x = ops.max_pool(x, 2)
    x = DoubleConv(self.features * 2**self.depth, dtype=self.dtype,
                   name="bottleneck")(x, train)
    for level in reversed(range(self.depth)):
      features = self.features * 2**level
      if self.upsample == "transpose":
        x = TransposedConv2x(features, dtype=self.dtype,
                             name=f"upsample{level + 1}")(x)
      else:
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
        x = layers.Conv(features, (1, 1), dtype=self.dtype,
                        name=f"upsample{level + 1}")(x)
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = DoubleConv(features, dtype=self.dtype,
                     name=f"up{level + 1}")(x, train)
    x = layers.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
