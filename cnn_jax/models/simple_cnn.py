"""The lecture's MNIST network: conv-pool-conv-pool-dense-dense.

Default sizes give the classic 824,458-parameter model for 28x28x1 inputs:
conv3x3(1->32)-relu-pool2-conv3x3(32->64)-relu-pool2-dense(3136->256)-relu-dense(10).
The lecture's ablations are options of the same module: `pool=False` drops
the max-pooling (the dense layer then sees full-resolution maps), and
`features=()` drops the convolutions, leaving an MLP
(flatten-dense(hidden)-relu-dense(num_classes)).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers


class Dropout(nn.Module):
  """nn.Dropout whose `rate` may also be a traced scalar: a sweep member's
  own dropout rate in a vmapped sweep (cnn_jax/sweeps/sweep.py). Zeroes each unit
  with probability `rate` and scales the rest by 1 / (1 - rate)."""

  rate: Any = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or (isinstance(self.rate, (int, float))
                         and self.rate == 0.0):
      return x
    # float32 arithmetic whether the rate is a Python float or an array, so
    # a sweep member drops exactly the units its single run would.
    keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class SimpleCNN(nn.Module):
  """Input [B, H, W, C] (H, W divisible by 2**len(features) when pooling);
  output logits [B, num_classes]."""

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  kernel_size: int = 3
  use_batchnorm: bool = False
  dropout_rate: float = 0.0
  pool: bool = True  # 2x2 max-pooling after each conv
  dtype: Any = jnp.float32
  # 'auto', 'xla', 'im2col' or None (conv_impls.default_conv_impl()); see
  # layers.Conv.
  conv_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(
          f"SimpleCNN expects images [B, H, W, C], got shape {x.shape}")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      if self.pool and not self.use_batchnorm:
        # The same layers in the order that runs faster (layers.py).
        x = layers.ConvReluMaxPool(width, (self.kernel_size,) * 2, 2,
                                   dtype=self.dtype, conv_impl=self.conv_impl,
                                   name=f"conv{i + 1}")(x)
        continue
      x = layers.Conv(width, (self.kernel_size,) * 2, padding="SAME",
                      use_bias=not self.use_batchnorm, dtype=self.dtype,
                      conv_impl=self.conv_impl, name=f"conv{i + 1}")(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=self.dtype, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      if self.pool:
        x = ops.max_pool(x, 2)
    x = x.reshape((x.shape[0], -1))
    x = layers.Dense(self.hidden, dtype=self.dtype, name="dense1")(x)
    x = nn.relu(x)
    x = Dropout(self.dropout_rate)(x, deterministic=not train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
