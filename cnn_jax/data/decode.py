"""Host-side decoding and augmentation of one image, before batching:
decode (JPEG at reduced size when the crop allows it), random-resized crop
to the model size, horizontal flip; resize + center crop for evaluation.

Used by the Grain pipeline (grain_pipeline.py) in its worker processes, and
by image_files.py and tfds_images.py for evaluation reads (a TFDS record's
encoded image is decoded from its bytes exactly as the file would be). Pure functions of (file or array,
numpy Generator): the same example and generator state give the same pixels
in any process.

Reduced-size JPEG decoding: libjpeg can decode at 1/2, 1/4 or 1/8 of the
size (the DCT is scaled, much cheaper than decoding and then shrinking).
PIL's `draft` picks the largest such reduction that leaves the crop box at
least as large as the output, so the final resize still only shrinks. The
pixels then differ slightly from a full decode (a different low-pass), as
in every pipeline that uses it (e.g. DALI, FFCV).
"""

import dataclasses
import math

import numpy as np
from PIL import Image

_MODES = {1: "L", 3: "RGB"}


class BadImageError(ValueError):
  """An image file that is missing, unreadable, or of an unexpected size."""


@dataclasses.dataclass(frozen=True)
class HostAugment:
  """What happens to each image on the host before batching.

  image_size: (H, W) of the output; empty: the input's size (arrays only;
    a file then must already have the size of the others).
  crop_scale: (min, max) area fraction of the random-resized crop
    (Inception-style, as torchvision's RandomResizedCrop); empty: no random
    crop, the whole image is resized.
  crop_ratio: (min, max) aspect ratio (width / height) of the crop.
  flip: random horizontal flip (p = 0.5).
  channels: 3 (RGB) or 1 (grayscale); files are converted.
  reduced_decode: decode JPEGs at 1/2, 1/4 or 1/8 size when the crop allows
    (False: always the full image, as torchvision's ImageFolder does).
  """

  image_size: tuple = ()
  crop_scale: tuple = ()
  crop_ratio: tuple = (3 / 4, 4 / 3)
  flip: bool = False
  channels: int = 3
  reduced_decode: bool = True


def random_resized_box(rng, width, height, scale, ratio):
  """(left, top, w, h) of a random crop of a width x height image: area a
  uniform fraction in `scale`, aspect ratio log-uniform in `ratio`; after 10
  failed draws the largest center crop within `ratio` (torchvision's
  RandomResizedCrop.get_params, so the statistics match PyTorch recipes)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def center_box(width, height, out_size, fraction):
  """(left, top, w, h): the center crop that resizing the shorter side to
  out / fraction and cropping `out_size` (H, W) takes (fraction 0.875:
  ImageNet's 256 -> 224 evaluation)."""
  out_h, out_w = out_size
  scale = min(out_h, out_w) / fraction / min(width, height)
  w, h = min(width, out_w / scale), min(height, out_h / scale)
  return (width - w) / 2, (height - h) / 2, w, h


def _crop_resize(image, box, out_size, reduction=1.0):
  """`image` cropped to box (original pixel units) and resized to out_size
  (H, W), bilinear (with antialiasing when shrinking, as PIL does)."""
  left, top, w, h = (v / reduction for v in box)
  return image.resize((out_size[1], out_size[0]), Image.Resampling.BILINEAR,
                      box=(left, top, left + w, top + h))


def _box(rng, width, height, augment, eval_fraction):
  if eval_fraction:
    return center_box(width, height, augment.image_size, eval_fraction)
  if augment.crop_scale:
    return random_resized_box(rng, width, height, augment.crop_scale,
                              augment.crop_ratio)
  return 0, 0, width, height


def _finish(array, rng, augment, channels):
  array = array.reshape(*array.shape[:2], channels)
  if augment.flip and rng.random() < 0.5:
    array = array[:, ::-1]
  return np.ascontiguousarray(array)


def decode_file(path, augment, rng=None, eval_fraction=0.0, name=None):
  """One image file -> uint8 [H, W, C] (augment.image_size, channels).

  path: a file path, or a binary file object (e.g. io.BytesIO over a TFDS
    record's encoded image: the same decode as the file would get).
  Train (eval_fraction=0): random-resized crop (augment.crop_scale) or the
  whole image, resized, maybe flipped; `rng` a numpy Generator. Eval
  (eval_fraction > 0): the center crop of center_box, no randomness.
  Raises BadImageError naming `name` (default: `path`) when it cannot be
  read.
  """
  mode = _MODES[augment.channels]
  try:
    with Image.open(path) as image:
      width, height = image.size
      out_size = augment.image_size or (height, width)
      box = _box(rng, width, height, augment, eval_fraction)
      reduction = 1.0
      if augment.reduced_decode and image.format == "JPEG" and (
          box[2] > 2 * out_size[1]
          and box[3] > 2 * out_size[0]):
        # The smallest decode that keeps the crop >= the output size.
        wanted = (math.ceil(width * out_size[1] / box[2]),
                  math.ceil(height * out_size[0] / box[3]))
        drafted = image.draft(mode, wanted)
        if drafted is not None:
          reduction = width / drafted[1][2]
      image = image.convert(mode)
      if box != (0, 0, width, height) or image.size != (out_size[1],
                                                        out_size[0]):
        image = _crop_resize(image, box, out_size, reduction)
      array = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(f"{name or path}: cannot be read as an image ({e})"
                        ) from e
  return _finish(array, rng, augment, augment.channels)


def transform_array(array, augment, rng=None, eval_fraction=0.0):
  """The same as decode_file for an already decoded uint8 [H, W, C] image
  (in-memory or TFDS sources). With nothing to do, `array` unchanged."""
  array = np.asarray(array)
  if not (augment.crop_scale or augment.flip or eval_fraction) and (
      not augment.image_size
      or tuple(array.shape[:2]) == tuple(augment.image_size)):
    return array  # nothing to do (also for series and clips: any rank)
  height, width, channels = array.shape
  out_size = augment.image_size or (height, width)
  box = _box(rng, width, height, augment, eval_fraction)
  if box != (0, 0, width, height) or (height, width) != tuple(out_size):
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    array = np.asarray(_crop_resize(image, box, out_size), np.uint8)
  return _finish(array, rng, augment, channels)
