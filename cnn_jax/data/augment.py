"""On-device augmentation: pure, jittable functions with per-example keys.

All functions take images [B, H, W, C] (float) and a PRNG key, and return
images of the same shape and dtype. Each example draws from its own key
(split from the batch key), so results do not depend on the batch size.
"""

import jax
import jax.numpy as jnp


def _example_keys(key, batch_size):
  return jax.random.split(key, batch_size)


def random_crop(images, key, padding):
  """Zero-pads by `padding` pixels on each side, then crops back to H x W.

  Equivalent to a random translation of up to `padding` pixels in each
  direction with zero fill (the classic CIFAR crop when padding=4).
  """
  if padding <= 0:
    return images
  _, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))

  def crop_one(image, k):
    dy, dx = jax.random.randint(k, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, image.shape[-1]))

  return jax.vmap(crop_one)(padded, _example_keys(key, images.shape[0]))


def random_flip(images, key):
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


AUGMENT_DEFAULTS = {"crop_padding": 0, "flip": False}


def augment_batch(images, key, augment_config=None):
  """The augmentation selected by the config's `data.augment` section.

  Args:
    images: float [B, H, W, C].
    key: PRNG key for the whole batch.
    augment_config: mapping with keys of AUGMENT_DEFAULTS (missing keys take
      the default; an unknown key is an error naming it).
  """
  options = dict(AUGMENT_DEFAULTS)
  for name, value in dict(augment_config or {}).items():
    if name not in AUGMENT_DEFAULTS:
      raise ValueError(
          f"config.data.augment.{name} is not an augmentation; known: "
          f"{', '.join(AUGMENT_DEFAULTS)}")
    options[name] = value
  crop_key, flip_key = jax.random.split(key)
  images = random_crop(images, crop_key, options["crop_padding"])
  if options["flip"]:
    images = random_flip(images, flip_key)
  return images


def normalize(images, mean, std):
  """uint8 (or [0, 255] float) images -> float32 (x / 255 - mean) / std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
