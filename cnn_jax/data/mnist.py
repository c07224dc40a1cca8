"""MNIST from the four original IDX files (gzipped or not) in one directory."""

import os

import numpy as np

from cnn_jax.data import idx
from cnn_jax.data.dataset import ArrayDataset

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}


def _find(data_dir, stem):
  for candidate in (stem + ".gz", stem):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f"MNIST file {stem}(.gz) not found in data directory {data_dir!r}")


def load_mnist(data_dir):
  """Returns {'train': ArrayDataset, 'test': ArrayDataset}, images [N,28,28,1]."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"MNIST data directory not found: {data_dir!r}")
  splits = {}
  for split, (image_stem, label_stem, count) in _FILES.items():
    image_path = _find(data_dir, image_stem)
    label_path = _find(data_dir, label_stem)
    images = idx.read_idx(image_path, expected_ndim=3,
                          expected_shape_tail=(28, 28))
    labels = idx.read_idx(label_path, expected_ndim=1)
    if len(images) != len(labels):
      raise idx.IdxFormatError(
          f"{image_path} holds {len(images)} images but {label_path} holds "
          f"{len(labels)} labels")
    if len(images) != count:
      # A user's own subset is fine; say so rather than fail.
      print(f"note: {image_path} holds {len(images)} images "
            f"(the original has {count})")
    if labels.size and labels.max() > 9:
      raise idx.IdxFormatError(
          f"{label_path}: label {labels.max()} is not a digit 0-9")
    splits[split] = ArrayDataset(images[..., None], labels.astype(np.int32),
                                 f"mnist/{split}")
  return splits


def from_config(data_dir, data_config):
  del data_config  # nothing to choose: the four IDX files are fixed
  return load_mnist(data_dir)
