"""1D CNNs for time-series classification (Wang, Yan & Oates, 2017).

FCN: conv8(128) - conv5(256) - conv3(128), each conv-BN-ReLU with 'SAME'
padding, then global average pooling over time and a dense layer. Without
pooling or strides it accepts any length T and keeps the timing of features.

ResNet1D: three residual blocks (64, 128, 128 channels) of the same
conv8-conv5-conv3 stack; the shortcut is a 1x1 conv + BN where the channels
change and a BN otherwise, as in the paper's reference code.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers


class FCN1D(nn.Module):
  """Input [B, T, C]; output logits [B, num_classes]."""

  num_classes: int = 2
  features: Sequence[int] = (128, 256, 128)
  kernel_sizes: Sequence[int] = (8, 5, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input("FCN1D", x, "T", kind="time series")
    x = x.astype(self.dtype)
    for i, (width, kernel) in enumerate(zip(self.features, self.kernel_sizes)):
      x = layers.ConvBNAct(width, kernel, dtype=self.dtype,
                           name=f"conv_bn_relu{i + 1}")(x, train)
    x = ops.global_avg_pool(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)


class ResidualBlock1D(nn.Module):
  """conv8-BN-ReLU - conv5-BN-ReLU - conv3-BN, + shortcut, ReLU: [B, T, C] -> [B, T, features]."""

  features: int
  kernel_sizes: Sequence[int] = (8, 5, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = x
    last = len(self.kernel_sizes) - 1
    for i, kernel in enumerate(self.kernel_sizes):
      y = layers.ConvBNAct(self.features, kernel,
                           activation=None if i == last else nn.relu,
                           dtype=self.dtype, name=f"conv_bn{i + 1}")(y, train)
    if x.shape[-1] != self.features:
      x = layers.Conv(self.features, (1,), use_bias=False, dtype=self.dtype,
                      name="shortcut_conv")(x)
    x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype,
                         name="shortcut_bn")(x)
    return nn.relu(x + y)


class ResNet1D(nn.Module):
  """Input [B, T, C]; output logits [B, num_classes]."""

  num_classes: int = 2
  features: Sequence[int] = (64, 128, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input("ResNet1D", x, "T", kind="time series")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = ResidualBlock1D(width, dtype=self.dtype,
                          name=f"block{i + 1}")(x, train)
    x = ops.global_avg_pool(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
