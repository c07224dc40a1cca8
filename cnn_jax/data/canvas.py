"""Real MNIST digits placed on larger canvases: one seeded generator for
multi-label, segmentation, localization and detection data.

  canvases = make_canvases(mnist["train"].images, mnist["train"].labels,
                           num_canvases=1000, canvas_size=64, max_digits=4)
  canvases["images"]    # uint8   [N, S, S, 1]   the canvases
  canvases["boxes"]     # float32 [N, D, 4]      (y0, x0, y1, x1) per digit
  canvases["classes"]   # int32   [N, D]         digit 0-9, -1 = no digit
  canvases["masks"]     # int32   [N, S, S]      0 background, 1 + digit
  canvases["presence"]  # int32   [N, 10]        multi-hot: which digits occur

(D = max_digits.) Each canvas holds between min_digits and max_digits
digits drawn uniformly with replacement from the given pool (a canvas may hold
the same digit class twice). A digit is first cropped to its ink, the
bounding box of its non-zero pixels, and that crop is pasted at a uniformly
drawn position that keeps it fully inside the canvas, so a box is the digit's
tight ink box in pixel-edge coordinates: the digit covers rows y0 .. y1 - 1
and columns x0 .. x1 - 1 (y1 - y0 is its height in pixels). Boxes are
integers stored as float32. Digit slots beyond a canvas's count have class
-1 and box (0, 0, 0, 0).

With allow_overlap=False (default) the boxes of a canvas do not intersect
(they may touch). With allow_overlap=True boxes may overlap; pixels are then
the maximum of the overlapping digits (ink on black), and where two digits
both have mask-strength ink the later digit's class wins in the mask.

The mask labels a pixel 1 + digit class when the pasted digit's intensity
there is >= mask_threshold (default 128, half the ink range), else 0: the
faint anti-aliased rim of a stroke counts as background, as a binarised
MNIST would.

The result is a pure function of (the pool, the arguments): the same seed
gives the same canvases. For train/test data draw the training canvases from
MNIST's training digits and the test canvases from its test digits (as
`canvas_splits` does), so no digit image occurs in both.

This module also defines the data sources 'mnist_multidigit' (labels: the
presence multi-hot [N, 10]) and 'mnist_digit_masks' (labels: masks
[N, S, S]); see `canvas_splits` for their `config.data` keys.
"""

import numpy as np

from cnn_jax.data.dataset import ArrayDataset

NUM_DIGIT_CLASSES = 10
DIGIT_NAMES = tuple(str(d) for d in range(NUM_DIGIT_CLASSES))
# A canvas whose digits cannot be placed without overlap after this many
# position draws per digit is restarted; after _MAX_RESTARTS restarts the
# arguments are taken to be infeasible.
_MAX_TRIES = 100
_MAX_RESTARTS = 100


def ink_boxes(digit_images):
  """int32 [M, 4]: (y0, x0, y1, x1) of the non-zero pixels of each image.

  Args:
    digit_images: [M, h, w] or [M, h, w, 1] uint8.
  Raises ValueError naming the first image with no ink.
  """
  images = _squeeze(digit_images)
  rows = images.any(axis=2)  # [M, h]
  cols = images.any(axis=1)  # [M, w]
  empty = ~rows.any(axis=1)
  if empty.any():
    raise ValueError(f"digit image {int(np.argmax(empty))} is all zeros (no "
                     "ink to place)")
  h, w = images.shape[1:]
  y0 = np.argmax(rows, axis=1)
  y1 = h - np.argmax(rows[:, ::-1], axis=1)
  x0 = np.argmax(cols, axis=1)
  x1 = w - np.argmax(cols[:, ::-1], axis=1)
  return np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)


def _squeeze(digit_images):
  images = np.asarray(digit_images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError(f"digit images must be [M, h, w] or [M, h, w, 1], got "
                     f"shape {images.shape}")
  if images.dtype != np.uint8:
    raise ValueError(f"digit images must be uint8, got {images.dtype}")
  return images


def _check_arguments(images, labels, num_canvases, canvas_size, min_digits,
                     max_digits, num_classes):
  if len(images) == 0 or len(images) != len(labels):
    raise ValueError(f"{len(images)} digit images and {len(labels)} labels: "
                     "need the same number, at least one")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"digit labels must be in 0..{num_classes - 1}, got "
                     f"{labels.min()}..{labels.max()}")
  if num_canvases < 0:
    raise ValueError(f"num_canvases={num_canvases} must be >= 0")
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"min_digits={min_digits}, max_digits={max_digits}: "
                     "need 1 <= min_digits <= max_digits")
  if canvas_size < max(images.shape[1:]):
    raise ValueError(f"canvas_size={canvas_size} is smaller than the digit "
                     f"images ({images.shape[1]}x{images.shape[2]})")


def _place(rng, sizes, canvas_size, allow_overlap):
  """Top-left corners [k, 2] for crops of `sizes` [k, 2], or None when a
  digit found no free spot (the caller restarts the canvas)."""
  corners = np.zeros((len(sizes), 2), np.int64)
  for j, (h, w) in enumerate(sizes):
    for _ in range(_MAX_TRIES):
      y = rng.integers(0, canvas_size - h + 1)
      x = rng.integers(0, canvas_size - w + 1)
      if allow_overlap or all(
          y >= cy + ch or cy >= y + h or x >= cx + cw or cx >= x + w
          for (cy, cx), (ch, cw) in zip(corners[:j], sizes[:j])):
        corners[j] = (y, x)
        break
    else:
      return None
  return corners


def make_canvases(digit_images, digit_labels, num_canvases, canvas_size=64,
                  min_digits=1, max_digits=4, seed=0, allow_overlap=False,
                  mask_threshold=128, num_classes=NUM_DIGIT_CLASSES):
  """Canvases of real digits with their boxes, classes, masks and presence.

  Args:
    digit_images: uint8 [M, h, w] or [M, h, w, 1], the pool (e.g. MNIST
      train); each must have some ink.
    digit_labels: int [M], the class of each, in 0..num_classes-1.
    num_canvases: N, how many canvases.
    canvas_size: S, the side of the square canvas in pixels (>= h, w).
    min_digits, max_digits: each canvas holds a uniformly drawn number of
      digits in [min_digits, max_digits].
    seed: the numpy seed; the output is a pure function of the arguments.
    allow_overlap: False: digit boxes do not intersect (raises ValueError if
      the digits cannot be fitted); True: they may.
    mask_threshold: intensity (0..255) from which a digit pixel counts as the
      digit in `masks`.
    num_classes: width of `presence` (10 for MNIST).
  Returns:
    dict of numpy arrays (see the module docstring): images uint8
    [N, S, S, 1], boxes float32 [N, max_digits, 4] (y0, x0, y1, x1) in
    pixels, classes int32 [N, max_digits] (-1 padding), masks int32 [N, S, S]
    (0 background, 1 + class), presence int32 [N, num_classes] multi-hot,
    num_digits int32 [N], and digit_index int32 [N, max_digits] (the pool
    index of each placed digit, -1 padding).
  """
  images = _squeeze(digit_images)
  labels = np.asarray(digit_labels).astype(np.int64).reshape(-1)
  _check_arguments(images, labels, num_canvases, canvas_size, min_digits,
                   max_digits, num_classes)
  ink = ink_boxes(images)
  sizes_all = ink[:, 2:] - ink[:, :2]  # [M, 2] (h, w) of each crop

  n, s, d = num_canvases, canvas_size, max_digits
  out = {
      "images": np.zeros((n, s, s, 1), np.uint8),
      "boxes": np.zeros((n, d, 4), np.float32),
      "classes": np.full((n, d), -1, np.int32),
      "masks": np.zeros((n, s, s), np.int32),
      "presence": np.zeros((n, num_classes), np.int32),
      "num_digits": np.zeros((n,), np.int32),
      "digit_index": np.full((n, d), -1, np.int32),
  }
  rng = np.random.default_rng(seed)
  for i in range(n):
    count = int(rng.integers(min_digits, max_digits + 1))
    chosen = rng.integers(0, len(images), count)
    for _ in range(_MAX_RESTARTS):
      corners = _place(rng, sizes_all[chosen], s, allow_overlap)
      if corners is not None:
        break
    else:
      raise ValueError(
          f"could not place {count} digits without overlap on a {s}x{s} "
          f"canvas; use a larger canvas_size, fewer max_digits, or "
          "allow_overlap=True")
    canvas, mask = out["images"][i, :, :, 0], out["masks"][i]
    for j, (index, (y, x)) in enumerate(zip(chosen, corners)):
      y0, x0, y1, x1 = ink[index]
      crop = images[index, y0:y1, x0:x1]
      h, w = crop.shape
      region = canvas[y:y + h, x:x + w]
      np.maximum(region, crop, out=region)
      mask[y:y + h, x:x + w][crop >= mask_threshold] = labels[index] + 1
      out["boxes"][i, j] = (y, x, y + h, x + w)
      out["classes"][i, j] = labels[index]
      out["digit_index"][i, j] = index
      out["presence"][i, labels[index]] = 1
    out["num_digits"][i] = count
  return out


# --- data sources ------------------------------------------------------------

# config.data keys of the canvas sources and their defaults.
CANVAS_DEFAULTS = {
    "num_train": 20000,  # canvases drawn from MNIST's 60,000 train digits
    "num_test": 2000,  # canvases drawn from MNIST's 10,000 test digits
    "canvas_size": 64,
    "min_digits": 1,
    "max_digits": 4,
    "allow_overlap": False,
    "mask_threshold": 128,
    "canvas_seed": 0,  # train canvases: this seed; test: this seed + 1
}


def canvas_options(data_config):
  """CANVAS_DEFAULTS updated with the keys `data_config` sets."""
  return {k: data_config.get(k, v) for k, v in CANVAS_DEFAULTS.items()}


def canvas_splits(digit_splits, options, label_key, name):
  """{'train', 'test'} ArrayDatasets of canvases labelled by `label_key`.

  Args:
    digit_splits: {'train', 'test'} ArrayDatasets of single digits (MNIST).
    options: canvas_options(config.data).
    label_key: 'presence' (multi-hot [N, 10]) or 'masks' ([N, S, S]).
    name: the dataset name for messages, e.g. 'mnist_multidigit'.
  """
  splits = {}
  for offset, split in enumerate(("train", "test")):
    digits = digit_splits[split]
    canvases = make_canvases(
        digits.images, digits.labels, options[f"num_{split}"],
        canvas_size=options["canvas_size"], min_digits=options["min_digits"],
        max_digits=options["max_digits"],
        seed=options["canvas_seed"] + offset,
        allow_overlap=options["allow_overlap"],
        mask_threshold=options["mask_threshold"])
    class_names = (DIGIT_NAMES if label_key == "presence"
                   else ("background",) + DIGIT_NAMES)
    splits[split] = ArrayDataset(canvases["images"], canvases[label_key],
                                 f"{name}/{split}", class_names)
  return splits


def _mnist_digits(data_dir):
  # Imported here: cnn_jax.data's __init__ imports this module.
  from cnn_jax.data import bundled_data_dir  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.mnist import load_mnist  # pylint: disable=g-import-not-at-top
  return load_mnist(data_dir or bundled_data_dir("mnist"))


def multidigit_from_config(data_dir, data_config):
  """Source 'mnist_multidigit': which of the 10 digits a canvas holds.

  data_dir: MNIST's IDX files (empty: the bundled data/mnist).
  """
  return canvas_splits(_mnist_digits(data_dir), canvas_options(data_config),
                       "presence", "mnist_multidigit")


def digit_masks_from_config(data_dir, data_config):
  """Source 'mnist_digit_masks': per-pixel 0 background / 1 + digit class.

  data_dir: MNIST's IDX files (empty: the bundled data/mnist).
  """
  return canvas_splits(_mnist_digits(data_dir), canvas_options(data_config),
                       "masks", "mnist_digit_masks")
