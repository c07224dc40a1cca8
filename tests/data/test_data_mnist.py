"""IDX reader and MNIST loader on real files. Bad files and their errors:
tests/test_faults.py (Bad data)."""

import numpy as np
import pytest

from cnn_jax.data import bundled_data_dir
from cnn_jax.data import idx
from cnn_jax.data import load_mnist
from tests.conftest import write_idx


def test_round_trip_plain_and_gzip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for name in ("a.idx", "a.idx.gz"):
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / name), array)


def test_bundled_mnist_has_original_counts_and_statistics():
  splits = load_mnist(bundled_data_dir("mnist"))
  train, test = splits["train"], splits["test"]
  assert train.images.shape == (60000, 28, 28, 1)
  assert test.images.shape == (10000, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  # Known facts about MNIST: mean train pixel 33.318421, 6742 ones in train,
  # and the first training labels 5 0 4 1 9.
  assert train.images.mean() == pytest.approx(33.318421, abs=1e-5)
  assert np.sum(train.labels == 1) == 6742
  assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
  assert test.labels[:3].tolist() == [7, 2, 1]
