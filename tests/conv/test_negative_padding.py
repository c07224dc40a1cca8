"""Negative convolution padding (cnn_jax/conv/negative_padding.py).

The reference pads and crops the input with numpy and runs a 'VALID'
convolution, which no implementation gets wrong; XLA:CPU's own convolution
with pads like ((-1, 1), (0, 0)) reads past its input (the module's
docstring), so it cannot be the reference here.
"""

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.conv import conv_impls
from cnn_jax.conv import negative_padding
from cnn_jax.conv import onednn
from cnn_jax.conv import onednn_build

_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
            3: ("NDHWC", "DHWIO", "NDHWC")}
_PADS = [((-1, 1), (0, 0)), ((0, 0), (-1, 1)), ((-1, 1), (-1, 1)),
         ((-2, 2), (1, -1)), ((2, -1), (-1, 0))]


def _rand(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _numpy_padded(x, pads):
  """x with each spatial dim cropped where its pad is negative and
  zero-padded where it is positive."""
  for axis, (lo, hi) in enumerate(pads, start=1):
    x = np.take(x, range(max(-lo, 0), x.shape[axis] - max(-hi, 0)), axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (max(lo, 0), max(hi, 0))
    x = np.pad(x, widths)
  return x


def _reference(x, k, pads):
  n = x.ndim - 2
  return np.asarray(lax.conv_general_dilated(
      _numpy_padded(x, pads), k, (1,) * n, "VALID",
      dimension_numbers=_NUMBERS[n]))


@pytest.mark.parametrize("impl", ["xla", "onednn", "im2col", "mixed"])
@pytest.mark.parametrize("pads", _PADS)
def test_negative_padding_matches_a_cropped_input(impl, pads):
  # Batch 2: XLA's wrong row in the last batch element reads memory past the
  # buffer, in the first one the next element's rows.
  x, k = _rand(0, (2, 6, 7, 4)), _rand(1, (3, 3, 4, 5))
  conv = jax.jit(lambda x, k: conv_impls.conv_general_dilated(
      x, k, (1, 1), pads, dimension_numbers=_NUMBERS[2], impl=impl))
  for _ in range(3):  # whatever lies past the buffer changes between calls
    y = conv(x, k)
    expected = _reference(x, k, pads)
    chex.assert_shape(y, expected.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "onednn"])
def test_negative_padding_gradients_match_a_cropped_input(impl):
  pads = ((-1, 1), (1, -2))
  x, k = _rand(2, (3, 6, 7, 4)), _rand(3, (3, 3, 4, 5))

  def loss(conv):
    def f(x, k):
      y = conv(x, k)
      return jnp.sum(y * jnp.cos(y))
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  def cropped(x, k):
    starts = (0, 1, 0, 0)
    x = lax.slice(x, starts, (x.shape[0], x.shape[1], x.shape[2] - 2, 4))
    x = jnp.pad(x, ((0, 0), (0, 1), (1, 0), (0, 0)))
    return lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                    dimension_numbers=_NUMBERS[2])

  got = loss(lambda x, k: conv_impls.conv_general_dilated(
      x, k, (1, 1), pads, dimension_numbers=_NUMBERS[2], impl=impl))(x, k)
  want = loss(cropped)(x, k)
  for g, w in zip(got, want):
    chex.assert_equal_shape((g, w))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 3])
def test_negative_padding_in_1d_and_3d(n):
  x = _rand(4, (2, *(5,) * n, 3))
  k = _rand(5, (*(3,) * n, 3, 2))
  pads = ((-1, 1),) + ((1, -1),) * (n - 1)
  y = conv_impls.conv_general_dilated(x, k, (1,) * n, pads,
                                      dimension_numbers=_NUMBERS[n])
  np.testing.assert_allclose(y, _reference(x, k, pads), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(onednn_build.unavailable_reason() is not None,
                    reason="oneDNN unavailable here")
def test_onednn_runs_a_negatively_padded_convolution():
  x, k = _rand(6, (2, 6, 6, 4)), _rand(7, (3, 3, 4, 4))
  lowered = jax.jit(lambda x, k: onednn.conv_general_dilated(
      x, k, (1, 1), ((-1, 1), (0, 0)),
      dimension_numbers=_NUMBERS[2])).lower(x, k).as_text()
  assert "cnn_onednn" in lowered


def test_crop_leaves_other_paddings_alone():
  x = jnp.zeros((2, 6, 6, 4))
  for padding in ("SAME", "VALID", ((1, 0), (0, 2))):
    got, pads = negative_padding.crop(x, (3, 3, 4, 4), padding,
                                      dimension_numbers=_NUMBERS[2])
    assert got is x and pads == padding
  # Input dilation: a pad counts dilated rows, and XLA gets those right.
  got, pads = negative_padding.crop(x, (3, 3, 4, 4), ((-1, 1), (0, 0)),
                                    lhs_dilation=(2, 2),
                                    dimension_numbers=_NUMBERS[2])
  assert got is x and pads == ((-1, 1), (0, 0))


def test_crop_in_channels_first_layout():
  x = jnp.arange(2 * 4 * 6 * 6, dtype=jnp.float32).reshape(2, 4, 6, 6)
  got, pads = negative_padding.crop(x, (4, 4, 3, 3), ((-1, 1), (0, -2)),
                                    dimension_numbers=("NCHW", "OIHW", "NCHW"))
  np.testing.assert_array_equal(got, x[:, :, 1:, :4])
  assert pads == ((0, 1), (0, 0))


def test_cropping_more_than_the_input_is_a_clear_error():
  with pytest.raises(ValueError, match=r"padding \(-4, -3\) removes more "
                     r"than the 6 input rows of dimension 1"):
    negative_padding.crop(jnp.zeros((2, 6, 6, 4)), (3, 3, 4, 4),
                          ((-4, -3), (0, 0)), dimension_numbers=_NUMBERS[2])
