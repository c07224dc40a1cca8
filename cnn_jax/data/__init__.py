"""Data sources. `load_splits(data_config)` returns {'train', 'test'} (and
'val' when the data has or is asked for one) ArrayDatasets.

SOURCES maps `config.data.name` to a loader taking (data_dir, data_config);
every loader returns uint8 images [N, H, W, C] (ucr: float32 series
[N, T, C]; moving_digits: clips [N, T, H, W, C]) and its labels.
"""

import os

from cnn_jax.data import canvas
from cnn_jax.data import chestxray
from cnn_jax.data import cifar
from cnn_jax.data import csv_labels
from cnn_jax.data import digit_boxes
from cnn_jax.data import folder
from cnn_jax.data import mnist
from cnn_jax.data import moving_digits
from cnn_jax.data import npz
from cnn_jax.data import pneumonia
from cnn_jax.data import splits as splits_lib
from cnn_jax.data import tfds_images
from cnn_jax.data import tfds_segmentation
from cnn_jax.data import tfds_source
from cnn_jax.data import ucr
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.dataset import channel_stats
from cnn_jax.data.mnist import load_mnist

SOURCES = {
    "mnist": mnist.from_config,  # bundled: data/mnist
    "cifar10": cifar.from_config,  # bundled: data/cifar10 (4000/1000 subset)
    "npz": npz.from_config,
    "image_folder": folder.from_config,
    "csv": csv_labels.from_config,
    # TFDS in array-record format: decoded arrays (fixed-size images), or
    # with data.pipeline='grain' encoded images decoded by the Grain workers
    # (any size: imagenet2012).
    "tfds": tfds_images.from_config,
    # TFDS image + mask pairs (e.g. oxford_iiit_pet), resized; labels
    # [N, H, W] class ids.
    "tfds_segmentation": tfds_segmentation.from_config,
    # bundled: data/ucr (float32 z-normalised series [N, T, C])
    "ucr": ucr.from_config,
    # Real MNIST digits on 64x64 canvases (canvas.py; data_dir: MNIST, empty:
    # the bundled copy): labels multi-hot [N, 10] / masks [N, S, S].
    "mnist_multidigit": canvas.multidigit_from_config,
    "mnist_digit_masks": canvas.digit_masks_from_config,
    # The same canvases with boxes (digit_boxes.py): labels [N, 5] /
    # [N, max_digits, 5] = (class, y0, x0, y1, x1), boxes in [0, 1].
    "mnist_localization": digit_boxes.localization_from_config,
    "mnist_detection": digit_boxes.detection_from_config,
    # Clips [N, T, H, W, 1] of a moving MNIST digit, label: its direction.
    "moving_digits": moving_digits.from_config,
    # bundled: data/pneumonia (PneumoniaMNIST, labels multi-hot [N, 1]).
    "pneumonia": pneumonia.from_config,
    # NIH ChestX-ray14 folder layout (images/ + Data_Entry_2017.csv + split
    # lists): labels multi-hot [N, 14].
    "chestxray14": chestxray.from_config,
}
# Sources with a copy in the repository's data/ folder: an empty
# config.data.data_dir means that copy.
BUNDLED = ("mnist", "cifar10", "ucr", "pneumonia")

# The repository's data/ folder (bundled datasets), found next to the package
# for a source checkout / editable install, else under the working directory.
_REPO_DATA = os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "data")


def bundled_data_dir(name):
  for root in (_REPO_DATA, os.path.join(os.getcwd(), "data")):
    candidate = os.path.join(root, name)
    if os.path.isdir(candidate):
      return candidate
  return os.path.join(_REPO_DATA, name)


def load_splits(data_config):
  """Loads the dataset named by `data_config.name` from `data_config.data_dir`.

  An empty data_dir means the copy bundled in the repository's data/ folder
  (for the BUNDLED sources; TFDS: its default folder).
  """
  name = data_config.name
  if name not in SOURCES:
    raise ValueError(
        f"config.data.name={name!r} is not one of: {', '.join(SOURCES)}")
  data_dir = data_config.get("data_dir", "")
  if not data_dir and name in BUNDLED:
    data_dir = bundled_data_dir(name)
  splits = SOURCES[name](os.path.expanduser(data_dir), data_config)
  return splits_lib.complete(splits, data_config)


__all__ = ["ArrayDataset", "BUNDLED", "SOURCES", "bundled_data_dir",
           "channel_stats", "load_mnist", "load_splits"]
