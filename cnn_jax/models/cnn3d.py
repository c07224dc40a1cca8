"""3D CNNs for video clips and volumes: R3D-18 and a small C3D.

R3D-18 (Tran et al., 2018; torchvision's `r3d_18`): the ResNet-18 layout
with 3x3x3 convs. Stem conv(3x7x7, stride 1x2x2) - BN - ReLU, no max-pool;
four stages of `resnet.BasicBlock` (stages 2-4 stride 2 in time and space);
global avgpool; dense. 33,371,472 params at 400 (Kinetics) classes.

C3DSmall: a few-million-parameter take on C3D (Tran et al., 2015) for small
data sets: four conv3x3x3-BN-ReLU stages with max-pooling (the first pools
space only, so short clips keep their early motion), global avgpool,
dropout, dense.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers
from cnn_jax.models import resnet


class R3D(nn.Module):
  """Input [B, T, H, W, C] with T >= 8 and H, W >= 16; output logits [B, num_classes]."""

  stage_sizes: Sequence[int]
  num_classes: int = 400
  dtype: Any = jnp.float32

  @property
  def display_name(self) -> str:
    return f"R3D{2 * sum(self.stage_sizes) + 2}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Stages 2-4 downsample time 8x; the stem and stages 2-4 space 16x.
    layers.check_input(self.display_name, x, "THW", min_size=(8, 16, 16),
                       kind="videos")
    x = x.astype(self.dtype)
    x = layers.Conv(64, (3, 7, 7), (1, 2, 2),
                    padding=((1, 1), (3, 3), (3, 3)), use_bias=False,
                    kernel_init=layers.he_normal_fan_out, dtype=self.dtype,
                    name="stem_0")(x)
    x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype,
                         name="stem_1")(x)
    x = nn.relu(x)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = resnet.BasicBlock(64 * 2**i, strides, dtype=self.dtype,
                              name=f"layer{i + 1}_{j}")(x, train)
    x = ops.global_avg_pool(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)


R3D18 = functools.partial(R3D, stage_sizes=(2, 2, 2, 2))


class C3DSmall(nn.Module):
  """Input [B, T, H, W, C] with T >= 8 and H, W >= 16; output logits [B, num_classes].

  Default 101 classes as UCF-101, the data set C3D was evaluated on.
  """

  num_classes: int = 101
  features: Sequence[int] = (32, 64, 128, 256)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Pools: (1, 2, 2) then (2, 2, 2) for each further stage.
    stages = len(self.features)
    layers.check_input("C3DSmall", x, "THW",
                       min_size=(2**(stages - 1), 2**stages, 2**stages),
                       kind="videos")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = layers.ConvBNAct(width, 3, dtype=self.dtype,
                           name=f"conv{i + 1}")(x, train)
      x = ops.max_pool(x, (1, 2, 2) if i == 0 else (2, 2, 2))
    x = ops.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
