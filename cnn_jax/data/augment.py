"""On-device augmentation: pure, jittable functions with per-example keys.

Image functions take float images [B, H, W, C] with pixel values in [0, 255]
(train_step augments before it normalises) and a PRNG key, and return images
of the same shape and dtype. Each example draws from its own key, split from
the batch key. Areas that an augmentation empties (padding, cut-outs) are
filled with 0 (black), as torchvision's RandomCrop(padding=4) does.

mixup and cutmix also mix the labels: they return (images, soft_targets
[B, K]), and train_step then uses the soft-target cross-entropy.
"""

import math

import jax
import jax.numpy as jnp

# Every augmentation the config can select, and its default (all off).
AUGMENT_DEFAULTS = {
    "crop_padding": 0,  # pad by this many pixels, crop back (translation)
    "flip": False,  # mirror left-right with probability 1/2
    "translate": 0.0,  # random shift up to this fraction of H and W
    "resized_crop_min_scale": 0.0,  # >0: random resized crop (0.08: Inception)
    "brightness": 0.0,  # colour jitter strengths: factors in [1-s, 1+s]
    "contrast": 0.0,
    "saturation": 0.0,
    "cutout": 0,  # side in pixels of a square set to 0 (DeVries & Taylor)
    "mixup_alpha": 0.0,  # >0: mixup, lambda ~ Beta(alpha, alpha)
    "cutmix_alpha": 0.0,  # >0: cutmix, lambda ~ Beta(alpha, alpha)
}
_MAX_PIXEL = 255.0


def _example_keys(key, batch_size):
  return jax.random.split(key, batch_size)


def _shift(images, key, max_dy, max_dx):
  """Moves each image by up to (max_dy, max_dx) pixels, zero fill."""
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (max_dy, max_dy), (max_dx, max_dx),
                            (0, 0)))

  def shift_one(image, k):
    dy, dx = jax.random.randint(k, (2,), 0,
                                jnp.array([2 * max_dy + 1, 2 * max_dx + 1]))
    return jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, c))

  return jax.vmap(shift_one)(padded, _example_keys(key, images.shape[0]))


def random_crop(images, key, padding):
  """Zero-pads by `padding` pixels on each side, then crops back to H x W.

  Equivalent to a random translation of up to `padding` pixels in each
  direction with zero fill (the classic CIFAR crop when padding=4).
  """
  if padding <= 0:
    return images
  return _shift(images, key, padding, padding)


def random_translate(images, key, fraction):
  """Shifts each image by up to `fraction` of its height and width."""
  _, h, w, _ = images.shape
  max_dy, max_dx = int(round(fraction * h)), int(round(fraction * w))
  if max_dy == 0 and max_dx == 0:
    return images
  return _shift(images, key, max_dy, max_dx)


def random_flip(images, key):
  """Mirrors each image left-right with probability 1/2.

  A gather of each image's columns (reversed or not) rather than a select
  between the image and its mirror: after the resized crop, XLA:CPU runs the
  select about 15x slower at 224x224.
  """
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  width = images.shape[2]
  columns = jnp.where(flip[:, None], jnp.arange(width - 1, -1, -1),
                      jnp.arange(width))
  return jax.vmap(lambda image, cols: jnp.take(image, cols, axis=1))(
      images, columns)


def _linear_sample(image, coords, axis):
  """Bilinear resampling of `image` along `axis` at pixel-centre coordinates
  `coords` [N] (clamped to the image), by two gathers and a blend."""
  size = image.shape[axis]
  coords = jnp.clip(coords, 0.0, size - 1.0)
  low = jnp.floor(coords).astype(jnp.int32)
  high = jnp.minimum(low + 1, size - 1)
  shape = [1] * image.ndim
  shape[axis] = -1
  frac = (coords - low).astype(image.dtype).reshape(shape)
  return (jnp.take(image, low, axis=axis) * (1 - frac)
          + jnp.take(image, high, axis=axis) * frac)


def random_resized_crop(images, key, min_scale=0.08,
                        ratio=(3.0 / 4.0, 4.0 / 3.0)):
  """Inception-style crop: a random box of area fraction in [min_scale, 1]
  and aspect ratio in `ratio` (log-uniform), resized (bilinear) back to the
  input's H x W.

  Resampling is separable (rows, then columns) by gathers: O(H W C) per
  image, several times faster on CPU than jax.image.scale_and_translate's
  dense [H, H] and [W, W] weight matrices, and the same values inside the
  image.
  """
  _, h, w, _ = images.shape

  def crop_one(image, k):
    k_area, k_ratio, k_y, k_x = jax.random.split(k, 4)
    area = jax.random.uniform(k_area, (), minval=min_scale, maxval=1.0) * h * w
    log_ratio = jax.random.uniform(k_ratio, (), minval=math.log(ratio[0]),
                                   maxval=math.log(ratio[1]))
    box_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0, w)
    box_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0, h)
    y0 = jax.random.uniform(k_y, ()) * (h - box_h)
    x0 = jax.random.uniform(k_x, ()) * (w - box_w)
    # Output pixel i samples the box at its own pixel centre.
    rows = y0 + (jnp.arange(h) + 0.5) * box_h / h - 0.5
    cols = x0 + (jnp.arange(w) + 0.5) * box_w / w - 0.5
    return _linear_sample(_linear_sample(image, rows, 0), cols, 1)

  return jax.vmap(crop_one)(images, _example_keys(key, images.shape[0]))


def _grayscale(images):
  """Luma [B, H, W, 1] (ITU-R 601 weights, as PIL and torchvision)."""
  if images.shape[-1] != 3:
    return jnp.mean(images, axis=-1, keepdims=True)
  # Written out: a sum over the size-3 channel axis is a slow reduction on
  # XLA:CPU (about 10x this).
  return (0.299 * images[..., 0:1] + 0.587 * images[..., 1:2]
          + 0.114 * images[..., 2:3])


def color_jitter(images, key, brightness=0.0, contrast=0.0, saturation=0.0):
  """Scales brightness, contrast and saturation of each image by factors
  drawn uniformly from [1 - s, 1 + s] (torchvision's ColorJitter, fixed
  order), clipped to [0, 255]. Saturation leaves 1-channel images alone.

  Luma is linear in the pixels, so the luma of each stage follows from the
  input's by the same factors: one luma image and one mean per example
  instead of one per stage (4x faster on XLA:CPU at 224x224).
  """
  b, _, _, c = images.shape
  kb, kc, ks = jax.random.split(key, 3)

  def factors(k, strength):
    return jax.random.uniform(k, (b, 1, 1, 1), images.dtype,
                              max(0.0, 1.0 - strength), 1.0 + strength)

  saturate = saturation and c == 3
  gray = _grayscale(images) if (contrast or saturate) else None
  if brightness:
    scale = factors(kb, brightness)
    images = images * scale
    gray = None if gray is None else gray * scale
  if contrast:
    mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    scale = factors(kc, contrast)
    images = mean + scale * (images - mean)
    gray = mean + scale * (gray - mean)
  if saturate:
    images = gray + factors(ks, saturation) * (images - gray)
  return jnp.clip(images, 0.0, _MAX_PIXEL)


def _box_masks(key, batch, h, w, area_fraction):
  """bool [B, H, W, 1]: per example a box of about `area_fraction` [B] of the
  image (clipped at the border) around a uniformly drawn centre."""
  ky, kx = jax.random.split(key)
  side = jnp.sqrt(area_fraction)
  cy = jax.random.uniform(ky, (batch,)) * h
  cx = jax.random.uniform(kx, (batch,)) * w
  y0 = jnp.round(jnp.clip(cy - side * h / 2, 0, h))[:, None, None, None]
  y1 = jnp.round(jnp.clip(cy + side * h / 2, 0, h))[:, None, None, None]
  x0 = jnp.round(jnp.clip(cx - side * w / 2, 0, w))[:, None, None, None]
  x1 = jnp.round(jnp.clip(cx + side * w / 2, 0, w))[:, None, None, None]
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def cutout(images, key, size):
  """Sets a `size` x `size` square of each image to 0, centred anywhere in
  the image (so it may be clipped at the border)."""
  if size <= 0:
    return images
  b, h, w, _ = images.shape
  ky, kx = jax.random.split(key)
  y0 = jnp.floor(jax.random.uniform(ky, (b,)) * h - size / 2)
  x0 = jnp.floor(jax.random.uniform(kx, (b,)) * w - size / 2)
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  y0, x0 = y0[:, None, None, None], x0[:, None, None, None]
  inside = ((rows >= y0) & (rows < y0 + size) & (cols >= x0)
            & (cols < x0 + size))
  return jnp.where(inside, jnp.zeros((), images.dtype), images)


def _targets(labels, num_classes):
  """Soft targets [B, K] from int labels [B] (or multi-hot [B, K])."""
  if labels.ndim == 2:
    return labels.astype(jnp.float32)
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def mixup(images, labels, key, alpha, num_classes):
  """Blends each example with a random partner from the batch (Zhang et al.,
  2018), lambda ~ Beta(alpha, alpha) per example.

  Returns (images, soft_targets [B, K]); each target row sums to 1 for
  single-label data.
  """
  b = images.shape[0]
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha, (b,))
  partner = jax.random.permutation(k_perm, b)
  targets = _targets(labels, num_classes)
  mixed = (lam[:, None, None, None] * images
           + (1 - lam[:, None, None, None]) * images[partner])
  return (mixed.astype(images.dtype),
          lam[:, None] * targets + (1 - lam[:, None]) * targets[partner])


def cutmix(images, labels, key, alpha, num_classes):
  """Pastes a box of a random partner into each example (Yun et al., 2019);
  the targets mix in proportion to the pasted area.

  Returns (images, soft_targets [B, K]).
  """
  b, h, w, _ = images.shape
  k_lam, k_perm, k_box = jax.random.split(key, 3)
  lam = jax.random.beta(k_lam, alpha, alpha, (b,))
  partner = jax.random.permutation(k_perm, b)
  inside = _box_masks(k_box, b, h, w, 1.0 - lam)
  pasted = jnp.mean(inside, axis=(1, 2, 3))  # the area after clipping
  targets = _targets(labels, num_classes)
  return (jnp.where(inside, images[partner], images),
          (1 - pasted)[:, None] * targets + pasted[:, None] * targets[partner])


def _options(augment_config):
  options = dict(AUGMENT_DEFAULTS)
  for name, value in dict(augment_config or {}).items():
    if name not in AUGMENT_DEFAULTS:
      raise ValueError(
          f"config.data.augment.{name} is not an augmentation; known: "
          f"{', '.join(AUGMENT_DEFAULTS)}")
    options[name] = value
  return options


def mixes_labels(augment_config):
  """Whether the config turns on mixup or cutmix (soft targets)."""
  options = _options(augment_config)
  return bool(options["mixup_alpha"] or options["cutmix_alpha"])


def augment_batch(images, key, augment_config=None):
  """The label-preserving augmentation selected by `data.augment`.

  Order: random resized crop, crop with padding, translate, flip, colour
  jitter, cutout. Geometry before colour, as torchvision pipelines do; on
  XLA:CPU colour jitter before the (gather-based) resized crop is also about
  8x slower at 224x224.

  Args:
    images: float [B, H, W, C], pixel values in [0, 255].
    key: PRNG key for the whole batch.
    augment_config: mapping with keys of AUGMENT_DEFAULTS (missing keys take
      the default; an unknown key is an error naming it).
  """
  options = _options(augment_config)
  crop_key, flip_key = jax.random.split(key)
  if options["resized_crop_min_scale"]:
    images = random_resized_crop(images, jax.random.fold_in(key, 2),
                                 options["resized_crop_min_scale"])
  images = random_crop(images, crop_key, options["crop_padding"])
  if options["translate"]:
    images = random_translate(images, jax.random.fold_in(key, 3),
                              options["translate"])
  if options["flip"]:
    images = random_flip(images, flip_key)
  if options["brightness"] or options["contrast"] or options["saturation"]:
    images = color_jitter(images, jax.random.fold_in(key, 1),
                          options["brightness"], options["contrast"],
                          options["saturation"])
  if options["cutout"]:
    images = cutout(images, jax.random.fold_in(key, 4), options["cutout"])
  return images


def mix_batch(images, labels, key, augment_config, num_classes):
  """mixup and/or cutmix as `data.augment` selects -> (images, targets).

  With both on, each batch uses one of the two, chosen with probability 1/2
  (as timm does). With neither, the targets are the one-hot labels.
  """
  options = _options(augment_config)
  mixup_alpha, cutmix_alpha = options["mixup_alpha"], options["cutmix_alpha"]
  k_mixup, k_cutmix, k_choice = jax.random.split(key, 3)
  if mixup_alpha and cutmix_alpha:
    use_cutmix = jax.random.bernoulli(k_choice)
    mixed = mixup(images, labels, k_mixup, mixup_alpha, num_classes)
    cut = cutmix(images, labels, k_cutmix, cutmix_alpha, num_classes)
    return jax.tree.map(lambda a, b: jnp.where(use_cutmix, a, b), cut, mixed)
  if mixup_alpha:
    return mixup(images, labels, k_mixup, mixup_alpha, num_classes)
  if cutmix_alpha:
    return cutmix(images, labels, k_cutmix, cutmix_alpha, num_classes)
  return images, _targets(labels, num_classes)


def normalize(images, mean, std):
  """uint8 (or [0, 255] float) images -> float32 (x / 255 - mean) / std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
