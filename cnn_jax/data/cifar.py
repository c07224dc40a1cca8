"""CIFAR-10: the bundled 4000/1000 subset (data/cifar10/cifar10_subset.npz),
an npz with the same keys, or the official `cifar-10-batches-py` pickles."""

import os
import pickle

import numpy as np

from cnn_jax.data import npz
from cnn_jax.data.dataset import ArrayDataset

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
               "horse", "ship", "truck")
SUBSET_FILE = "cifar10_subset.npz"
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)],
            "test": ["test_batch"]}


def _read_python_batches(folder):
  """The official python version: pickled dicts of data [N, 3072] (the R, G,
  B planes of 32x32 images) and labels."""
  splits = {}
  for split, files in _BATCHES.items():
    images, labels = [], []
    for file_name in files:
      path = os.path.join(folder, file_name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch {path} not found")
      with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the official format
      data = np.asarray(batch[b"data"], np.uint8)
      images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch[b"labels"], np.int32))
    splits[split] = ArrayDataset(np.concatenate(images),
                                 np.concatenate(labels), f"cifar10/{split}",
                                 CLASS_NAMES)
  return splits


def load_cifar10(data_dir):
  """{'train', 'test'}: uint8 [N, 32, 32, 3] RGB and int32 labels.

  `data_dir` may be an .npz file (keys x_train, y_train, x_test, y_test), a
  folder holding cifar10_subset.npz, or the official cifar-10-batches-py
  folder (or its parent).
  """
  for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
    if os.path.isfile(os.path.join(folder, "data_batch_1")):
      return _read_python_batches(folder)
  path = data_dir
  if os.path.isdir(data_dir) and os.path.isfile(
      os.path.join(data_dir, SUBSET_FILE)):
    path = os.path.join(data_dir, SUBSET_FILE)
  splits = npz.load_npz(path, name="cifar10")
  for split, data in splits.items():
    if data.example_shape != (32, 32, 3):
      raise ValueError(f"{path}: {split} images have shape "
                       f"{data.example_shape}, not CIFAR's (32, 32, 3)")
    splits[split] = ArrayDataset(data.images, data.labels, data.name,
                                 CLASS_NAMES)
  return splits


def from_config(data_dir, data_config):
  del data_config  # nothing to choose: the layout is fixed
  return load_cifar10(data_dir)
