"""The lecture's primitives on `jax.lax`: cross-correlation, convolution and
pooling, for channels-last inputs `[B, *spatial, C]` with 1 to 3 spatial dims
and flax's `[*window, C_in, C_out]` kernels.

  geometry.py     padding ('valid', 'same', 'full', ints, (lo, hi) pairs),
                  strides, dilation and output sizes
  correlation.py  cross_correlation / convolution (batched, multi-channel)
                  and correlate / convolve (a plain signal)
  pooling.py      max_pool / avg_pool and their global versions, and
                  max_pool_bias_relu (a conv block's pool, bias and ReLU)

Use them as `from cnn_jax import ops; ops.max_pool(x, 2)`. This package
imports only cnn_jax.conv (how a convolution runs), nothing above it.
"""

from cnn_jax.ops.correlation import convolution
from cnn_jax.ops.correlation import convolve
from cnn_jax.ops.correlation import correlate
from cnn_jax.ops.correlation import cross_correlation
from cnn_jax.ops.geometry import IntOrSeq
from cnn_jax.ops.geometry import Padding
from cnn_jax.ops.geometry import output_size
from cnn_jax.ops.pooling import avg_pool
from cnn_jax.ops.pooling import global_avg_pool
from cnn_jax.ops.pooling import global_max_pool
from cnn_jax.ops.pooling import max_pool
from cnn_jax.ops.pooling import max_pool_bias_relu

__all__ = [
    "IntOrSeq", "Padding", "avg_pool", "convolution", "convolve",
    "correlate", "cross_correlation", "global_avg_pool", "global_max_pool",
    "max_pool", "max_pool_bias_relu", "output_size",
]
