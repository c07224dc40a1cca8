"""Localization and detection sets: real MNIST digits on canvases with boxes.

Built on the seeded canvas generator of canvas.py (train canvases from
MNIST's train digits with `canvas_seed`, test canvases from its test digits
with `canvas_seed + 1`), on the fly: 20,000 canvases take a few seconds.

Labels hold boxes normalised to [0, 1] by the canvas side, (y0, x0, y1, x1)
in pixel-edge coordinates (canvas.py: the digit's tight ink box):

  'mnist_localization': one digit per canvas, labels float32 [N, 5] =
      (class, y0, x0, y1, x1).
  'mnist_detection': min_digits..max_digits digits per canvas, labels
      float32 [N, max_digits, 5] = (class, y0, x0, y1, x1) per digit, rows
      past the canvas's digits are (-1, 0, 0, 0, 0).

config.data keys: those of canvas.CANVAS_DEFAULTS (num_train, num_test,
canvas_size, min_digits, max_digits, allow_overlap, canvas_seed).
"""

import numpy as np

from cnn_jax.data import canvas
from cnn_jax.data.dataset import ArrayDataset


def box_labels(canvases, canvas_size):
  """float32 [N, D, 5] (class, y0, x0, y1, x1), boxes / canvas_size, class
  -1 and a zero box in the empty slots."""
  classes = canvases["classes"].astype(np.float32)[..., None]
  boxes = canvases["boxes"] / np.float32(canvas_size)
  boxes = np.where(classes >= 0, boxes, 0.0)
  return np.concatenate([classes, boxes], axis=-1).astype(np.float32)


def digit_box_splits(digit_splits, options, name, single=False):
  """{'train', 'test'} ArrayDatasets of canvases with box labels.

  Args:
    digit_splits: {'train', 'test'} ArrayDatasets of MNIST digits.
    options: canvas.canvas_options(config.data).
    name: e.g. 'mnist_detection', for messages.
    single: one digit per canvas, labels [N, 5] (localization).
  """
  if single and (options["min_digits"], options["max_digits"]) != (1, 1):
    raise ValueError(
        f"{name} holds one digit per canvas: config.data.min_digits and "
        f"max_digits must be 1, got {options['min_digits']} and "
        f"{options['max_digits']}")
  splits = {}
  for offset, split in enumerate(("train", "test")):
    digits = digit_splits[split]
    canvases = canvas.make_canvases(
        digits.images, digits.labels, options[f"num_{split}"],
        canvas_size=options["canvas_size"], min_digits=options["min_digits"],
        max_digits=options["max_digits"],
        seed=options["canvas_seed"] + offset,
        allow_overlap=options["allow_overlap"])
    labels = box_labels(canvases, options["canvas_size"])
    if single:
      labels = labels[:, 0]
    splits[split] = ArrayDataset(canvases["images"], labels,
                                 f"{name}/{split}", canvas.DIGIT_NAMES)
  return splits


def _mnist_digits(data_dir):
  # Imported here: cnn_jax.data's __init__ imports this module.
  from cnn_jax.data import bundled_data_dir  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.mnist import load_mnist  # pylint: disable=g-import-not-at-top
  return load_mnist(data_dir or bundled_data_dir("mnist"))


def localization_from_config(data_dir, data_config):
  """Source 'mnist_localization' (data_dir: MNIST, empty: the bundled copy).

  min_digits and max_digits default to 1 here.
  """
  options = canvas.canvas_options(data_config)
  options["min_digits"] = data_config.get("min_digits", 1)
  options["max_digits"] = data_config.get("max_digits", 1)
  return digit_box_splits(_mnist_digits(data_dir), options,
                          "mnist_localization", single=True)


def detection_from_config(data_dir, data_config):
  """Source 'mnist_detection' (data_dir: MNIST, empty: the bundled copy)."""
  return digit_box_splits(_mnist_digits(data_dir),
                          canvas.canvas_options(data_config),
                          "mnist_detection")
