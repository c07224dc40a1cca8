"""CenterNet-style single-stage, anchor-free detector on a small ResNet + FPN.

Objects as points (Zhou et al., 2019): at stride 4 the network predicts,
per cell, a heat map of object centres for each of the K classes and, for
the object centred in that cell, the offset of its centre within the cell
and its size. Decoding (cnn_jax/tasks/detection.py) takes the heat-map
peaks, reads the box at each, and applies NMS.

Backbone: conv3x3/2 - BN - ReLU stem, then four stages of one
`resnet.BasicBlock` each (strides 1, 2, 2, 2: feature maps at strides 2, 4,
8, 16). An FPN-style top-down path (Lin et al., 2017) brings the stride-16
and stride-8 maps up to stride 4 (1x1 lateral convs, nearest upsampling,
sums) and a conv3x3-BN-ReLU smooths the result. Two heads, each conv3x3 -
ReLU - conv1x1: K heat-map logits (bias -2.19 so every cell starts at
probability 0.1, as CenterNet/RetinaNet) and 4 box numbers.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import layers
from cnn_jax.models import resnet

STRIDE = 4  # of the output grid, in input pixels
BOX_CHANNELS = ("offset_y", "offset_x", "height", "width")
_PRIOR = 0.1


def _upsample2(x):
  """Nearest-neighbour 2x upsampling of [B, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class CenterNet(nn.Module):
  """Input [B, H, W, C] with H, W divisible by 16; output [B, H/4, W/4, K + 4].

  Channels of the output: K heat-map logits (one per class), then
  BOX_CHANNELS: the centre's offset within its cell and the box height and
  width, all in output cells (STRIDE pixels).
  """

  num_classes: int = 10
  stage_features: Sequence[int] = (16, 32, 64, 128)
  fpn_features: int = 64
  head_features: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input("CenterNet", x, "HW", min_size=16, multiple_of=16)
    x = x.astype(self.dtype)
    x = layers.ConvBNAct(self.stage_features[0], 3, strides=2,
                         dtype=self.dtype, name="stem")(x, train)
    features = []
    for i, width in enumerate(self.stage_features):
      x = resnet.BasicBlock(width, 1 if i == 0 else 2, dtype=self.dtype,
                            name=f"stage{i + 1}")(x, train)
      features.append(x)
    # Top-down from the coarsest map to stride 4 (features[1]).
    y = layers.Conv(self.fpn_features, (1, 1), dtype=self.dtype,
                    name=f"lateral{len(features)}")(features[-1])
    for i in range(len(features) - 2, 0, -1):
      y = _upsample2(y) + layers.Conv(self.fpn_features, (1, 1),
                                      dtype=self.dtype,
                                      name=f"lateral{i + 1}")(features[i])
    y = layers.ConvBNAct(self.fpn_features, 3, dtype=self.dtype,
                         name="smooth")(y, train)

    def head(outputs, bias_init, name):
      h = layers.Conv(self.head_features, (3, 3), padding="SAME",
                      dtype=self.dtype, name=f"{name}_conv")(y)
      h = nn.relu(h)
      return layers.Conv(outputs, (1, 1), dtype=self.dtype,
                         bias_init=bias_init, name=f"{name}_out")(h)

    prior_bias = nn.initializers.constant(-math.log((1 - _PRIOR) / _PRIOR))
    heat = head(self.num_classes, prior_bias, "heatmap")
    box = head(len(BOX_CHANNELS), nn.initializers.zeros, "box")
    # float32 outputs so the losses stay accurate under bfloat16 compute.
    return jnp.concatenate([heat, box], axis=-1).astype(jnp.float32)
