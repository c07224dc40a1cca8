"""Arrays in an .npz file: images [N, H, W(, C)] uint8 and labels [N]."""

import os

import numpy as np

from cnn_jax.data.dataset import ArrayDataset

# (train images, train labels, test images, test labels[, val images, val
# labels]): the key names of the Keras/CIFAR layout; MedMNIST files use
# ('train_images', 'train_labels', 'test_images', 'test_labels', ...).
DEFAULT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def find_npz(path):
  """`path` itself if it is a file, else the one .npz in the folder `path`."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"npz file or folder not found: {path!r}")
  found = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
  if len(found) != 1:
    raise FileNotFoundError(
        f"{path!r} holds {len(found)} .npz files ({', '.join(found) or 'none'})"
        "; set config.data.data_dir to the file itself")
  return os.path.join(path, found[0])


def _images(array, where):
  if array.ndim == 3:  # [N, H, W] grayscale
    array = array[..., None]
  if array.ndim < 3:
    raise ValueError(f"{where}: shape {array.shape} is not [N, H, W(, C)]")
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.integer) and array.size and (
      array.min() >= 0 and array.max() <= 255):
    return array.astype(np.uint8)
  raise ValueError(
      f"{where}: dtype {array.dtype} is not uint8 pixels 0..255 (scale float "
      "images by 255 and cast to uint8 when writing the file)")


def _labels(array, where):
  if array.ndim == 2 and array.shape[1] == 1:  # [N, 1], as in MedMNIST
    array = array[:, 0]
  if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
    raise ValueError(f"{where}: dtype {array.dtype} is not integer class ids")
  if array.size and array.min() < 0:
    raise ValueError(f"{where}: negative class id {array.min()}")
  return array.astype(np.int32)


def load_npz(path, keys=DEFAULT_KEYS, name="npz"):
  """{'train', 'test'(, 'val')}: ArrayDatasets from the arrays named by keys.

  Args:
    path: an .npz file, or a folder holding exactly one.
    keys: 4 names (train images, train labels, test images, test labels) or
      6 (then val images, val labels).
  """
  if len(keys) not in (4, 6):
    raise ValueError(f"config.data.npz_keys={tuple(keys)} must name 4 arrays "
                     "(x_train, y_train, x_test, y_test) or 6 (+ x_val, y_val)")
  path = find_npz(path)
  with np.load(path, allow_pickle=False) as npz:
    missing = [k for k in keys if k not in npz.files]
    if missing:
      raise ValueError(
          f"{path}: no array {', '.join(map(repr, missing))} (it holds "
          f"{', '.join(npz.files)}); choose with config.data.npz_keys")
    splits = {}
    for split, (image_key, label_key) in zip(
        ("train", "test", "val"), zip(keys[0::2], keys[1::2])):
      splits[split] = ArrayDataset(
          _images(npz[image_key], f"{path}[{image_key!r}]"),
          _labels(npz[label_key], f"{path}[{label_key!r}]"),
          f"{name}/{split}")
  return splits


def from_config(data_dir, data_config):
  if not data_dir:
    raise ValueError("config.data.data_dir is empty; the 'npz' source needs "
                     "the path of an .npz file")
  return load_npz(data_dir, tuple(data_config.get("npz_keys", DEFAULT_KEYS)),
                  name=os.path.splitext(os.path.basename(data_dir))[0] or "npz")
