"""experiments/bench_winograd.py times a real convolution: its Winograd
F(2x2, 3x3) and F(4x4, 3x3) give lax's 'SAME' convolution and gradients."""

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_winograd


def _reference(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("m,tol", [(2, 1e-5), (4, 1e-4)])
@pytest.mark.parametrize("size,channels,features", [(8, 8, 16), (7, 4, 4),
                                                    (4, 16, 8)])
def test_values_and_gradients_match_lax(m, tol, size, channels, features):
  rng = np.random.default_rng(size + m)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, channels)),
                  jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, channels, features))
                       / np.sqrt(9 * channels), jnp.float32)
  got = bench_winograd.winograd_conv(x, kernel, m)
  want = _reference(x, kernel)
  chex.assert_shape(got, want.shape)
  np.testing.assert_allclose(got, want, atol=tol * float(jnp.abs(want).max()))

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  got_grads = jax.grad(loss(lambda x, k: bench_winograd.winograd_conv(
      x, k, m)), (0, 1))(x, kernel)
  want_grads = jax.grad(loss(_reference), (0, 1))(x, kernel)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=tol * float(jnp.abs(w).max()))


def test_unknown_tile_size_names_it():
  with pytest.raises(ValueError, match="m=3"):
    bench_winograd.winograd_matrices(3)
