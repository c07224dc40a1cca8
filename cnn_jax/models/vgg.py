"""VGG-11/13/16/19 with and without batch norm, in torchvision's layout.

Five stages of 3x3 convs (64, 128, 256, 512, 512 channels; `stage_sizes`
convs each) with a 2x2 max-pool after each stage, adaptive avgpool to 7x7,
classifier dense(4096) - dropout - dense(4096) - dropout - dense(num_classes).
The convs keep their bias even when batch norm follows, as torchvision does:
VGG-16 has 138,357,544 params, VGG-16-BN 138,365,992 (1000 classes).

Module names are torchvision's state_dict keys with '.' -> '_'
(`features.0.weight` -> `features_0/kernel`). The flatten before the
classifier is [H, W, C] here and [C, H, W] in torch.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers

STAGE_WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
  """Input [B, H, W, C] with H, W >= 32 (224 as trained); output logits [B, num_classes]."""

  stage_sizes: Sequence[int]
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @property
  def display_name(self) -> str:
    depth = sum(self.stage_sizes) + 3  # + the three dense layers
    return f"VGG{depth}" + ("-BN" if self.batch_norm else "")

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Five 2x2 pools halve (floor) the size five times.
    layers.check_input(self.display_name, x, "HW", min_size=32)
    x = x.astype(self.dtype)
    index = 0  # position in torchvision's `features` nn.Sequential
    for num_convs, width in zip(self.stage_sizes, STAGE_WIDTHS):
      for i in range(num_convs):
        if i == num_convs - 1 and not self.batch_norm:
          # The stage's last conv, ReLU and pool, in the order that runs
          # faster (the same layers: layers.ConvReluMaxPool).
          x = layers.ConvReluMaxPool(
              width, (3, 3), 2, padding=((1, 1), (1, 1)),
              kernel_init=layers.he_normal_fan_out, dtype=self.dtype,
              name=f"features_{index}")(x)
          index += 3  # conv, ReLU, pool
          continue
        x = layers.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                        kernel_init=layers.he_normal_fan_out,
                        dtype=self.dtype, name=f"features_{index}")(x)
        if self.batch_norm:
          x = layers.BatchNorm(use_running_average=not train,
                               dtype=self.dtype,
                               name=f"features_{index + 1}")(x)
        x = nn.relu(x)
        index += 3 if self.batch_norm else 2
      if self.batch_norm:
        x = ops.max_pool(x, 2)
        index += 1
    x = layers.adaptive_avg_pool(x, (7, 7))
    x = x.reshape((x.shape[0], -1))
    dense = functools.partial(
        layers.Dense, dtype=self.dtype,
        kernel_init=nn.initializers.normal(0.01))  # as torchvision
    x = nn.relu(dense(4096, name="classifier_0")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(dense(4096, name="classifier_3")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(self.num_classes, name="classifier_6")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)


VGG11 = functools.partial(VGG, stage_sizes=(1, 1, 2, 2, 2))
VGG13 = functools.partial(VGG, stage_sizes=(2, 2, 2, 2, 2))
VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3))
VGG19 = functools.partial(VGG, stage_sizes=(2, 2, 4, 4, 4))
VGG11BN = functools.partial(VGG11, batch_norm=True)
VGG13BN = functools.partial(VGG13, batch_norm=True)
VGG16BN = functools.partial(VGG16, batch_norm=True)
VGG19BN = functools.partial(VGG19, batch_norm=True)
