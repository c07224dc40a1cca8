"""IDX reader and MNIST loader: real files, bad files, clear errors."""

import gzip
import os

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


def _corrupt_copy(tmp_path, mutate):
  src = os.path.join(bundled_data_dir("mnist"), "t10k-labels-idx1-ubyte.gz")
  with gzip.open(src, "rb") as f:
    raw = bytearray(f.read())
  raw = mutate(raw)
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes(raw))
  return path


def test_bad_magic_number_is_rejected_naming_the_file(tmp_path):
  def mutate(raw):
    raw[0] = 7
    return raw
  path = _corrupt_copy(tmp_path, mutate)
  with pytest.raises(idx.IdxFormatError, match="t10k-labels.*magic"):
    idx.read_idx(path)


def test_header_count_that_disagrees_with_data_is_rejected(tmp_path):
  def mutate(raw):
    raw[4:8] = (20000).to_bytes(4, "big")  # header claims 20000 labels
    return raw
  path = _corrupt_copy(tmp_path, mutate)
  with pytest.raises(idx.IdxFormatError, match="needs 20000 data bytes"):
    idx.read_idx(path)


def test_truncated_gzip_is_rejected(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  src = os.path.join(bundled_data_dir("mnist"), "train-labels-idx1-ubyte.gz")
  with open(src, "rb") as f:
    path.write_bytes(f.read()[:5000])
  with pytest.raises(idx.IdxFormatError, match="train-images.*cannot be read"):
    idx.read_idx(path)


def test_wrong_image_shape_is_rejected(tmp_path):
  write_idx(tmp_path / "x.gz", np.zeros((3, 32, 32), np.uint8))
  with pytest.raises(idx.IdxFormatError, match=r"expected \(N, 28, 28\)"):
    idx.read_idx(tmp_path / "x.gz", expected_ndim=3,
                 expected_shape_tail=(28, 28))


def test_missing_directory_and_missing_file_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    load_mnist(str(tmp_path / "no_such_dir"))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    load_mnist(str(tmp_path))


def test_images_and_labels_count_mismatch(tiny_mnist_dir):
  write_idx(tiny_mnist_dir / "t10k-labels-idx1-ubyte.gz",
            np.zeros(99, np.uint8))
  with pytest.raises(idx.IdxFormatError, match="100 images but.*99 labels"):
    load_mnist(str(tiny_mnist_dir))
