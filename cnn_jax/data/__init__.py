"""Data sources. `load_splits(data_config)` returns {'train', 'test'} ArrayDatasets.

SOURCES maps `config.data.name` to a loader taking the data directory.
"""

import os

from cnn_jax.data.dataset import ArrayDataset, channel_stats
from cnn_jax.data.mnist import load_mnist

SOURCES = {
    "mnist": load_mnist,
}

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

  An empty data_dir means the copy bundled in the repository's data/ folder.
  """
  name = data_config.name
  if name not in SOURCES:
    raise ValueError(
        f"config.data.name={name!r} is not one of: {', '.join(SOURCES)}")
  data_dir = data_config.data_dir or bundled_data_dir(name)
  return SOURCES[name](os.path.expanduser(data_dir))


__all__ = ["ArrayDataset", "SOURCES", "bundled_data_dir", "channel_stats",
           "load_splits"]
