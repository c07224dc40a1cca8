"""Seeded photo-like JPEG folders in the ImageNet layout, for tests and the
input benchmark (experiments/bench_input.py): no download, the same files
for the same seed.

Random noise compresses badly and flat colour too well; photos sit between.
Each image here is a smooth colour field (low-frequency noise upsampled),
a gradient, a few hard-edged shapes and a little fine grain, so a JPEG of it
is about as large, and decodes about as slowly, as a photo of its size
(~70-100 KB at 0.7-1x of 500x375 and quality 90; ImageNet averages ~110 KB).
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw


def photo_like(rng, width, height):
  """uint8 [height, width, 3]: one photo-like image."""
  coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
  field = np.asarray(Image.fromarray(coarse).resize(
      (width, height), Image.Resampling.BICUBIC), np.float32)
  # Texture: mid-frequency detail, as foliage, fabric or fur give photos.
  fine = rng.normal(0, 1, (height // 3, width // 3, 3)).astype(np.float32)
  texture = np.asarray(Image.fromarray(
      np.clip(128 + 60 * fine, 0, 255).astype(np.uint8)).resize(
          (width, height), Image.Resampling.BILINEAR), np.float32) - 128
  ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]
  image = Image.fromarray(np.clip(field + ramp + texture, 0,
                                  255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(3, 8))):
    x0, x1 = sorted(rng.integers(0, width, 2))
    y0, y1 = sorted(rng.integers(0, height, 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < 0.5:
      draw.ellipse((x0, y0, x1, y1), fill=colour)
    else:
      draw.rectangle((x0, y0, x1, y1), fill=colour)
  grain_noise = rng.normal(0, 10, (height, width, 3)).astype(np.float32)
  return np.clip(np.asarray(image, np.float32) + grain_noise, 0,
                 255).astype(np.uint8)


def write_imagenet_folder(root, num_classes=2, per_class=4, val_per_class=2,
                          size=(500, 375), seed=0, quality=90):
  """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG; returns root.

  size: (width, height) of the largest image; each is drawn between 0.7x and
  1x of it (ImageNet's images vary in size). wnids: n00000000, n00000001...
  """
  rng = np.random.default_rng(seed)
  for split, count in (("train", per_class), ("val", val_per_class)):
    if not count:  # no val/ folder at all (not empty class folders)
      continue
    for label in range(num_classes):
      folder = os.path.join(root, split, f"n{label:08d}")
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        width = int(size[0] * rng.uniform(0.7, 1.0))
        height = int(size[1] * rng.uniform(0.7, 1.0))
        Image.fromarray(photo_like(rng, width, height)).save(
            os.path.join(folder, f"n{label:08d}_{i}.JPEG"), quality=quality)
  return root
