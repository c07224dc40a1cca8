"""ResNet-18/34/50/101/152: one generic `ResNet`, the depths are partials.

torchvision's v1.5 layout: conv7x7/2 - BN - ReLU - maxpool3/2, four stages
of residual blocks (64, 128, 256, 512 base widths; the first block of stages
2-4 has stride 2), global avgpool, dense. Convs have no bias (BN follows);
a block whose output shape differs from its input adds its shortcut through a
1x1 conv + BN projection. Bottleneck blocks put the stride in the 3x3 conv
(v1.5) and expand the width 4x. `small_images=True` is the CIFAR stem
(conv3x3/1, no max-pool) for 32x32 inputs.

The blocks work on 1D/2D/3D inputs ([B, *spatial, C], kernels 3 per axis),
so the video R3D in cnn3d.py reuses `BasicBlock`.

Module names follow torchvision's state_dict keys (`layer1.0.conv1.weight`
-> `layer1_0/conv1/kernel`, `downsample.0` -> `downsample_0`).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers


def _conv(features, kernel, strides, ndim, dtype, name):
  """A torch-padded (kernel // 2 each side), bias-free conv on `ndim` spatial axes."""
  pad = kernel // 2
  return layers.Conv(features, (kernel,) * ndim, (strides,) * ndim,
                     padding=((pad, pad),) * ndim, use_bias=False,
                     kernel_init=layers.he_normal_fan_out, dtype=dtype,
                     name=name)


def _shortcut(x, out_features, strides, train, dtype):
  """Identity, or a 1x1 conv + BN projection when the block changes the shape."""
  if strides == 1 and x.shape[-1] == out_features:
    return x
  x = _conv(out_features, 1, strides, x.ndim - 2, dtype, "downsample_0")(x)
  return layers.BatchNorm(use_running_average=not train, dtype=dtype,
                          name="downsample_1")(x)


class BasicBlock(nn.Module):
  """conv3 - BN - ReLU - conv3 - BN, + shortcut, ReLU: [B, *S, C] -> [B, *S/strides, features]."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  # Class constants, not dataclass fields (no annotation).
  expansion = 1
  convs_per_block = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    nd = x.ndim - 2
    bn = functools.partial(layers.BatchNorm, use_running_average=not train,
                           dtype=self.dtype)
    y = _conv(self.features, 3, self.strides, nd, self.dtype, "conv1")(x)
    y = nn.relu(bn(name="bn1")(y))
    y = _conv(self.features, 3, 1, nd, self.dtype, "conv2")(y)
    y = bn(name="bn2")(y)
    residual = _shortcut(x, self.features, self.strides, train, self.dtype)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """conv1 - conv3 (strided) - conv1 (x4 width), BN + ReLU between, + shortcut.

  [B, *S, C] -> [B, *S/strides, 4 * features].
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion = 4
  convs_per_block = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    nd = x.ndim - 2
    out_features = self.features * self.expansion
    bn = functools.partial(layers.BatchNorm, use_running_average=not train,
                           dtype=self.dtype)
    y = _conv(self.features, 1, 1, nd, self.dtype, "conv1")(x)
    y = nn.relu(bn(name="bn1")(y))
    y = _conv(self.features, 3, self.strides, nd, self.dtype, "conv2")(y)
    y = nn.relu(bn(name="bn2")(y))
    y = _conv(out_features, 1, 1, nd, self.dtype, "conv3")(y)
    y = bn(name="bn3")(y)
    residual = _shortcut(x, out_features, self.strides, train, self.dtype)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """Input [B, H, W, C]; output logits [B, num_classes].

  H, W >= 32 with the ImageNet stem (it downsamples 32x), >= 8 with
  `small_images=True` (8x).
  """

  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int = 1000
  small_images: bool = False
  dtype: Any = jnp.float32

  @property
  def display_name(self) -> str:
    # Weighted layers: the convs of every block + the stem conv + the dense.
    depth = self.block_cls.convs_per_block * sum(self.stage_sizes) + 2
    return f"ResNet{depth}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input(self.display_name, x, "HW",
                       min_size=8 if self.small_images else 32)
    x = x.astype(self.dtype)
    if self.small_images:
      x = _conv(64, 3, 1, 2, self.dtype, "conv1")(x)
    else:
      x = _conv(64, 7, 2, 2, self.dtype, "conv1")(x)
    x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype,
                         name="bn1")(x)
    x = nn.relu(x)
    if not self.small_images:
      x = ops.max_pool(x, 3, 2, padding=1)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(64 * 2**i, strides, dtype=self.dtype,
                           name=f"layer{i + 1}_{j}")(x, train)
    x = ops.global_avg_pool(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                              block_cls=Bottleneck)
