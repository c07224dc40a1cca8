"""On-device augmentation: shapes, determinism, and where pixels go."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import augment


def _one_hot_pixel_batch(b=8, h=6, w=6):
  images = np.zeros((b, h, w, 1), np.float32)
  images[:, 2, 1, 0] = 1.0  # a single bright pixel at (row 2, col 1)
  return jnp.asarray(images)


def test_crop_keeps_shape_dtype_and_moves_pixel_within_padding():
  images = _one_hot_pixel_batch()
  out = jax.jit(augment.random_crop, static_argnums=2)(
      images, jax.random.PRNGKey(0), 2)
  chex.assert_shape(out, images.shape)
  chex.assert_type(out, jnp.float32)
  for example in np.asarray(out):
    rows, cols, _ = np.nonzero(example)
    if len(rows):  # the pixel may be shifted out of the frame
      assert abs(rows[0] - 2) <= 2 and abs(cols[0] - 1) <= 2
  # Different examples get different shifts.
  assert len({np.asarray(e).tobytes() for e in out}) > 1


def test_zero_padding_crop_is_identity():
  images = _one_hot_pixel_batch()
  np.testing.assert_array_equal(
      augment.random_crop(images, jax.random.PRNGKey(0), 0), images)


def test_flip_mirrors_known_pixel():
  images = _one_hot_pixel_batch(b=32)
  out = np.asarray(augment.random_flip(images, jax.random.PRNGKey(3)))
  flipped = out[:, 2, 6 - 1 - 1, 0] == 1.0
  kept = out[:, 2, 1, 0] == 1.0
  assert np.all(flipped ^ kept)
  assert 0 < flipped.sum() < 32


def test_augment_batch_is_deterministic_per_key():
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
  config = {"crop_padding": 2, "flip": True}
  a = augment.augment_batch(images, jax.random.PRNGKey(1), config)
  b = augment.augment_batch(images, jax.random.PRNGKey(1), config)
  c = augment.augment_batch(images, jax.random.PRNGKey(2), config)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_unknown_augmentation_is_named():
  with pytest.raises(ValueError, match="config.data.augment.rotate"):
    augment.augment_batch(jnp.zeros((1, 4, 4, 1)), jax.random.PRNGKey(0),
                          {"rotate": 10})


def test_normalize():
  out = augment.normalize(jnp.array([[0, 255]], jnp.uint8), 0.5, 0.25)
  np.testing.assert_allclose(out, [[-2.0, 2.0]])
