"""The lecture's MNIST network: conv-pool-conv-pool-dense-dense.

Default sizes give the classic 824,458-parameter model for 28x28x1 inputs:
conv3x3(1->32)-relu-pool2-conv3x3(32->64)-relu-pool2-dense(3136->256)-relu-dense(10).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers


class SimpleCNN(nn.Module):
  """Input [B, H, W, C] (H, W divisible by 2**len(features)); output logits [B, num_classes]."""

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  kernel_size: int = 3
  use_batchnorm: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(
          f"SimpleCNN expects images [B, H, W, C], got shape {x.shape}")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = layers.Conv(width, (self.kernel_size,) * 2, padding="SAME",
                      use_bias=not self.use_batchnorm, dtype=self.dtype,
                      name=f"conv{i + 1}")(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=self.dtype, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      x = ops.max_pool(x, 2)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, dtype=self.dtype, name="dense1")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
