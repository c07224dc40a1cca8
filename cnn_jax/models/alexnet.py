"""AlexNet in torchvision's single-tower layout (61,100,840 params at 1000 classes).

features: conv11x11/4(64) - maxpool3/2 - conv5x5(192) - maxpool3/2 -
conv3x3(384) - conv3x3(256) - conv3x3(256) - maxpool3/2, ReLU after each conv;
adaptive avgpool to 6x6; classifier: dropout - dense(4096) - dropout -
dense(4096) - dense(num_classes).

Module names are torchvision's state_dict keys with '.' -> '_'
(`features.3.weight` -> `features_3/kernel`) so weights map by rule. The
flatten before the classifier is [H, W, C] here and [C, H, W] in torch: an
imported `classifier.1` weight needs its rows permuted.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import layers

# Smallest H, W for which the third max-pool still has a 3x3 window to read.
MIN_SIZE = 63


class AlexNet(nn.Module):
  """Input [B, H, W, C] with H, W >= 63 (224 as trained); output logits [B, num_classes]."""

  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_input("AlexNet", x, "HW", min_size=MIN_SIZE)
    x = x.astype(self.dtype)
    # (torchvision index, features, kernel, stride, padding, pool after)
    convs = ((0, 64, 11, 4, 2, True), (3, 192, 5, 1, 2, True),
             (6, 384, 3, 1, 1, False), (8, 256, 3, 1, 1, False),
             (10, 256, 3, 1, 1, True))
    for index, features, kernel, stride, pad, pool in convs:
      kwargs = dict(padding=((pad, pad), (pad, pad)), dtype=self.dtype,
                    name=f"features_{index}")
      if pool:  # the same layers, in the order that runs faster
        x = layers.ConvReluMaxPool(features, (kernel, kernel), 3, 2,
                                   (stride, stride), **kwargs)(x)
      else:
        x = nn.relu(layers.Conv(features, (kernel, kernel),
                                (stride, stride), **kwargs)(x))
    x = layers.adaptive_avg_pool(x, (6, 6))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(layers.Dense(4096, dtype=self.dtype, name="classifier_1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(layers.Dense(4096, dtype=self.dtype, name="classifier_4")(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="classifier_6")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
