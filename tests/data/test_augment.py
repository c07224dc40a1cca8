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


# --- the augmentations added for issue 10 -------------------------------

def _image_batch(b=8, h=8, w=8, c=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, h, w, c),
                            minval=0.0, maxval=255.0)


_IMAGE_FUNCTIONS = {
    "translate": lambda x, k: augment.random_translate(x, k, 0.25),
    "resized_crop": lambda x, k: augment.random_resized_crop(x, k, 0.3),
    "color_jitter": lambda x, k: augment.color_jitter(x, k, 0.4, 0.4, 0.4),
    "cutout": lambda x, k: augment.cutout(x, k, 3),
}


class ImageAugmentationTest(chex.TestCase):
  """Each image augmentation jitted and eager: shape, dtype, determinism."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_shape_dtype_determinism(self):
    images = _image_batch()
    for name, fn in _IMAGE_FUNCTIONS.items():
      run = self.variant(fn)
      a = run(images, jax.random.PRNGKey(1))
      b = run(images, jax.random.PRNGKey(1))
      c = run(images, jax.random.PRNGKey(2))
      chex.assert_shape(a, images.shape)
      chex.assert_type(a, jnp.float32)
      chex.assert_tree_all_finite(a)
      chex.assert_trees_all_close(a, b)
      assert not np.allclose(a, c), name
      assert not np.allclose(a, images), name



# Jitted once for all tests below (beta sampling is slow to compile); labels
# 0..15 with 16 classes make the targets say which example was mixed in.
_mixup = jax.jit(augment.mixup, static_argnums=(3, 4))
_cutmix = jax.jit(augment.cutmix, static_argnums=(3, 4))
_LABELS = jnp.arange(16)


def test_mixing_keeps_shapes_is_deterministic_and_targets_sum_to_one():
  images = _image_batch(b=16)
  for fn in (_mixup, _cutmix):
    mixed, targets = fn(images, _LABELS, jax.random.PRNGKey(0), 0.4, 16)
    chex.assert_shape(mixed, images.shape)
    chex.assert_shape(targets, (16, 16))
    chex.assert_type([mixed, targets], jnp.float32)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    again, _ = fn(images, _LABELS, jax.random.PRNGKey(0), 0.4, 16)
    other, _ = fn(images, _LABELS, jax.random.PRNGKey(1), 0.4, 16)
    np.testing.assert_array_equal(mixed, again)
    assert not np.array_equal(mixed, other)


def test_mixup_blends_pixels_with_the_weights_of_its_targets():
  images = _image_batch(b=16)
  mixed, targets = _mixup(images, _LABELS, jax.random.PRNGKey(0), 0.4, 16)
  # Target row i weighs example j by the share of j's pixels in example i.
  np.testing.assert_allclose(
      mixed, jnp.einsum("ij,jhwc->ihwc", targets, images), rtol=1e-4,
      atol=1e-3)


def test_cutmix_pastes_a_box_whose_area_is_the_partner_weight():
  images = jnp.broadcast_to(jnp.arange(16.0)[:, None, None, None],
                            (16, 8, 8, 3))  # example i is all i
  mixed, targets = _cutmix(images, _LABELS, jax.random.PRNGKey(0), 0.4, 16)
  for i in range(16):
    share = np.mean(np.asarray(mixed[i]) != i)  # pixels from the partner
    own = float(targets[i, i])
    if own < 1.0:  # the partner differs from i
      np.testing.assert_allclose(1.0 - share, own, atol=1e-6)


def test_translate_moves_a_known_pixel_by_at_most_the_fraction():
  images = _one_hot_pixel_batch(b=32, h=8, w=8)  # pixel at (2, 1)
  out = np.asarray(augment.random_translate(images, jax.random.PRNGKey(0),
                                            0.25))  # up to 2 pixels
  moved = set()
  for example in out:
    rows, cols, _ = np.nonzero(example)
    if len(rows):
      assert abs(rows[0] - 2) <= 2 and abs(cols[0] - 1) <= 2
      moved.add((rows[0], cols[0]))
  assert len(moved) > 3


def test_crop_with_padding_places_pixel_where_the_offset_says():
  # One example, padding 1: the crop offset (dy, dx) in [0, 2]^2 moves the
  # pixel at (r, c) to (r + 1 - dy, c + 1 - dx).
  images = _one_hot_pixel_batch(b=1)
  key = jax.random.PRNGKey(5)
  dy, dx = np.asarray(jax.random.randint(jax.random.split(key, 1)[0], (2,),
                                         0, 3))
  out = np.asarray(augment.random_crop(images, key, 1))[0, ..., 0]
  assert out[2 + 1 - dy, 1 + 1 - dx] == 1.0 and out.sum() == 1.0


def test_cutout_zeroes_a_square_of_the_given_side():
  images = jnp.ones((16, 12, 12, 1))
  out = np.asarray(augment.cutout(images, jax.random.PRNGKey(0), 4))
  zeroed = (out == 0).sum(axis=(1, 2, 3))
  assert zeroed.max() == 16 and zeroed.min() >= 4  # clipped at borders
  for example in out[..., 0]:
    rows, cols = np.nonzero(example == 0)
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4


def test_resized_crop_at_full_scale_is_the_identity():
  images = _image_batch()
  out = augment.random_resized_crop(images, jax.random.PRNGKey(0), 1.0,
                                    ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, images, atol=1e-3)


def test_color_jitter_stays_in_pixel_range_and_keeps_gray_gray():
  gray = jnp.full((4, 5, 5, 3), 100.0).at[:, 0, 0].set(250.0)
  out = np.asarray(augment.color_jitter(gray, jax.random.PRNGKey(0), 0.8,
                                        0.8, 0.8))
  assert out.min() >= 0.0 and out.max() <= 255.0
  np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)


def test_mix_batch_off_gives_one_hot_and_augment_keys_default_off():
  images = _image_batch(b=4)
  out, targets = augment.mix_batch(images, jnp.array([0, 1, 2, 1]),
                                   jax.random.PRNGKey(0), {}, 3)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(targets, jax.nn.one_hot([0, 1, 2, 1], 3))
  np.testing.assert_array_equal(
      augment.augment_batch(images, jax.random.PRNGKey(0),
                            augment.AUGMENT_DEFAULTS), images)
  assert not augment.mixes_labels(augment.AUGMENT_DEFAULTS)
  assert augment.mixes_labels({"cutmix_alpha": 1.0})
  both = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}
  mix_both = jax.jit(lambda x, key: augment.mix_batch(x, _LABELS, key, both,
                                                      16))
  _, targets = mix_both(_image_batch(b=16), jax.random.PRNGKey(0))
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)


def test_every_augment_key_is_in_the_mnist_config_and_off():
  from configs import mnist  # pylint: disable=g-import-not-at-top
  section = mnist.get_config().data.augment.to_dict()
  assert set(section) == set(augment.AUGMENT_DEFAULTS)
  assert section == augment.AUGMENT_DEFAULTS


def test_resized_crop_resampling_matches_jax_image_resize():
  # Upscaling the top-left 4x4 box 2x with pixel-centre sampling is
  # jax.image.resize of that box (away from the box edge, where resize
  # clamps to the box and the crop reads the neighbouring image pixels).
  image = jnp.arange(64.0).reshape(8, 8, 1)
  coords = (jnp.arange(8) + 0.5) * 0.5 - 0.5
  out = augment._linear_sample(augment._linear_sample(image, coords, 0),
                               coords, 1)
  expected = jax.image.resize(image[:4, :4], (8, 8, 1), "linear")
  np.testing.assert_allclose(out[1:-1, 1:-1], expected[1:-1, 1:-1],
                             atol=1e-5)
