"""DenseNet-121/169/201 (Huang et al., 2017) in torchvision's layout.

Stem conv7x7/2(64) - BN - ReLU - maxpool3/2; dense blocks whose layers are
BN-ReLU-conv1x1(bn_size * growth) - BN-ReLU-conv3x3(growth) and concatenate
their output to their input; between blocks a transition BN-ReLU-conv1x1
that keeps `compression` of the channels, then avgpool 2/2; final BN - ReLU -
global avgpool - dense. Convs have no bias. DenseNet-121 has 7,978,856
params at 1000 classes.

Module names follow torchvision's state_dict keys without the `features.`
container (`features.denseblock1.denselayer1.norm1` ->
`denseblock1/denselayer1/norm1`).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers

# torchvision's kaiming_normal_ default: fan_in, gain sqrt(2), untruncated.
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, kernel, dtype, name, strides=1, pad=0):
  return layers.Conv(features, (kernel, kernel), (strides, strides),
                     padding=((pad, pad), (pad, pad)), use_bias=False,
                     kernel_init=_he_normal, dtype=dtype, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1-BN-ReLU-conv3x3: [B, H, W, C] -> [B, H, W, C + growth_rate]."""

  growth_rate: int
  bn_size: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(layers.BatchNorm, use_running_average=not train,
                           dtype=self.dtype)
    y = nn.relu(bn(name="norm1")(x))
    y = _conv(self.bn_size * self.growth_rate, 1, self.dtype, "conv1")(y)
    y = nn.relu(bn(name="norm2")(y))
    y = _conv(self.growth_rate, 3, self.dtype, "conv2", pad=1)(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  """`num_layers` DenseLayers: [B, H, W, C] -> [B, H, W, C + num_layers * growth_rate]."""

  num_layers: int
  growth_rate: int
  bn_size: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.num_layers):
      x = DenseLayer(self.growth_rate, self.bn_size, self.dropout_rate,
                     dtype=self.dtype, name=f"denselayer{j + 1}")(x, train)
    return x


class Transition(nn.Module):
  """BN-ReLU-conv1x1-avgpool2: [B, H, W, C] -> [B, H/2, W/2, features]."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype,
                         name="norm")(x)
    x = _conv(self.features, 1, self.dtype, "conv")(nn.relu(x))
    return ops.avg_pool(x, 2)


class DenseNet(nn.Module):
  """Input [B, H, W, C] with H, W >= 32 (224 as trained); output logits [B, num_classes]."""

  block_config: Sequence[int]
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  num_classes: int = 1000
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @property
  def display_name(self) -> str:
    # Two convs per dense layer, one per transition, the stem conv, the dense.
    depth = 2 * sum(self.block_config) + len(self.block_config) + 1
    return f"DenseNet{depth}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    # The stem and the transitions downsample 32x in all.
    layers.check_input(self.display_name, x, "HW", min_size=32)
    x = x.astype(self.dtype)
    bn = functools.partial(layers.BatchNorm, use_running_average=not train,
                           dtype=self.dtype)
    x = _conv(self.num_init_features, 7, self.dtype, "conv0", strides=2,
              pad=3)(x)
    x = nn.relu(bn(name="norm0")(x))
    x = ops.max_pool(x, 3, 2, padding=1)
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size,
                     self.dropout_rate, dtype=self.dtype,
                     name=f"denseblock{i + 1}")(x, train)
      if i < len(self.block_config) - 1:
        x = Transition(int(x.shape[-1] * self.compression), dtype=self.dtype,
                       name=f"transition{i + 1}")(x, train)
    x = nn.relu(bn(name="norm5")(x))
    x = ops.global_avg_pool(x)
    x = layers.Dense(self.num_classes, dtype=self.dtype,
                 bias_init=nn.initializers.zeros, name="classifier")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)


DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, block_config=(6, 12, 32, 32))
DenseNet201 = functools.partial(DenseNet, block_config=(6, 12, 48, 32))
