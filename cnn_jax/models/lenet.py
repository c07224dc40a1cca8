"""LeNet-5 (LeCun et al., 1998): conv-pool-conv-pool-conv-dense-dense.

C1 conv5x5(6) - S2 avgpool2 - C3 conv5x5(16) - S4 avgpool2 - C5 conv5x5(120)
- F6 dense(84) - output dense(num_classes), tanh activations. With every C3
map connected to every S2 map (the usual modern simplification of the
paper's sparse table) a 32x32x1 input gives the textbook 61,706 parameters.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.models import layers


class LeNet5(nn.Module):
  """Input [B, H, W, C] with H, W >= 32 - 2 * padding; output logits [B, num_classes].

  `padding=2` is the common variant for 28x28 MNIST digits (pads them to the
  32x32 the network was designed for). Larger inputs leave C5 with more than
  1x1 positions, which F6 sees flattened.
  """

  num_classes: int = 10
  padding: int = 0
  activation: Callable = nn.tanh
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No dropout or batch norm in LeNet-5.
    layers.check_input("LeNet5", x, "HW", min_size=32 - 2 * self.padding)
    x = x.astype(self.dtype)
    pad = ((self.padding, self.padding),) * 2
    x = self.activation(layers.Conv(6, (5, 5), padding=pad, dtype=self.dtype,
                                    name="c1")(x))
    x = ops.avg_pool(x, 2)
    x = self.activation(layers.Conv(16, (5, 5), padding="VALID",
                                    dtype=self.dtype, name="c3")(x))
    x = ops.avg_pool(x, 2)
    x = self.activation(layers.Conv(120, (5, 5), padding="VALID",
                                    dtype=self.dtype, name="c5")(x))
    x = x.reshape((x.shape[0], -1))
    x = self.activation(layers.Dense(84, dtype=self.dtype, name="f6")(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="output")(x)
    # Logits in float32 so losses stay accurate under bfloat16 compute.
    return x.astype(jnp.float32)
