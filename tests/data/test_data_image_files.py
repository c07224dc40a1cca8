"""Image folders and CSV label files: bad files and unknown classes are named,
or skipped with a counted warning (data.skip_bad); resizing, caching, lazy
reading and multi-label CSVs."""

import os
import warnings

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import load_splits
from cnn_jax.data.folder import IgnoredFilesWarning
from cnn_jax.data.folder import UnknownClassError
from cnn_jax.data.image_files import BadImageError
from cnn_jax.data.image_files import SkippedImagesWarning
from cnn_jax.data.lazy import LazyImages


def _write_png(path, value, size=(6, 6)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _folders(root, per_class=3):
  """root/{train,test}/{a,b}/NN.png, pixel value = 10 * label + index."""
  for split in ("train", "test"):
    for label, name in enumerate(("a", "b")):
      for i in range(per_class):
        _write_png(root / split / name / f"{i:02d}.png", 10 * label + i)
  return root


def _config(**values):
  values.setdefault("num_workers", 2)
  return ml_collections.ConfigDict(values)


def test_broken_image_is_named_or_skipped_with_a_count(tmp_path):
  root = _folders(tmp_path)
  broken = root / "train" / "b" / "01.png"
  broken.write_bytes(b"not a png at all")
  config = _config(name="image_folder", data_dir=str(root))
  with pytest.raises(BadImageError, match=r"train/b/01\.png"):
    load_splits(config)
  config.skip_bad = True
  with pytest.warns(SkippedImagesWarning, match=r"skipped 1 of 6 .*01\.png"):
    splits = load_splits(config)
  assert len(splits["train"]) == 5  # the five good files, none dropped
  assert splits["train"].labels.tolist() == [0, 0, 0, 1, 1]
  assert splits["train"].images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 12]


def test_unknown_class_folder_in_test_is_named_or_skipped(tmp_path):
  root = _folders(tmp_path)
  _write_png(root / "test" / "zebra" / "00.png", 99)
  config = _config(name="image_folder", data_dir=str(root))
  with pytest.raises(UnknownClassError, match=r"zebra/00\.png.*'zebra'"):
    load_splits(config)
  config.skip_bad = True
  with pytest.warns(SkippedImagesWarning, match="skipped 1 files of unknown"):
    assert len(load_splits(config)["test"]) == 6


def test_non_image_files_are_counted_not_silently_dropped(tmp_path):
  root = _folders(tmp_path)
  (root / "train" / "a" / "notes.txt").write_text("hello")
  with pytest.warns(IgnoredFilesWarning, match=r"ignored 1 .*notes\.txt"):
    load_splits(_config(name="image_folder", data_dir=str(root)))


def test_sizes_must_agree_unless_resized(tmp_path):
  root = _folders(tmp_path)
  _write_png(root / "train" / "a" / "big.png", 5, size=(9, 7))
  config = _config(name="image_folder", data_dir=str(root))
  with pytest.raises(BadImageError, match=r"big\.png.*image_size"):
    load_splits(config)
  config.image_size = (4, 5)
  config.channels = 1
  splits = load_splits(config)
  assert splits["train"].images.shape == (7, 4, 5, 1)
  assert splits["test"].images.shape == (6, 4, 5, 1)


def test_cache_is_written_once_and_read_back_memory_mapped(tmp_path):
  root = _folders(tmp_path / "data")
  config = _config(name="image_folder", data_dir=str(root),
                   cache_dir=str(tmp_path / "cache"))
  first = load_splits(config)
  cached = sorted(os.listdir(tmp_path / "cache"))
  assert sum(name.endswith(".images.npy") for name in cached) == 2
  second = load_splits(config)
  assert isinstance(second["train"].images, np.memmap)
  np.testing.assert_array_equal(first["train"].images, second["train"].images)
  # A changed file gives a new cache entry, never stale pixels.
  _write_png(root / "train" / "a" / "00.png", 77)
  os.utime(root / "train" / "a" / "00.png", ns=(1, 1))
  third = load_splits(config)
  assert third["train"].images[0, 0, 0, 0] == 77


def test_skipped_files_are_reported_again_from_the_cache(tmp_path):
  root = _folders(tmp_path / "data")
  (root / "train" / "a" / "02.png").write_bytes(b"broken")
  config = _config(name="image_folder", data_dir=str(root), skip_bad=True,
                   cache_dir=str(tmp_path / "cache"))
  with pytest.warns(SkippedImagesWarning, match="skipped 1 of 6"):
    load_splits(config)
  with pytest.warns(SkippedImagesWarning, match="leaves out 1"):
    assert len(load_splits(config)["train"]) == 5


def test_lazy_images_decode_on_demand_and_name_bad_files(tmp_path):
  root = _folders(tmp_path)
  config = _config(name="image_folder", data_dir=str(root), in_memory=False)
  splits = load_splits(config)
  train = splits["train"]
  assert isinstance(train.images, LazyImages)
  assert train.images.shape == (6, 6, 6, 3)
  np.testing.assert_array_equal(train.images[np.array([4, 1])][:, 0, 0, 0],
                                [11, 1])
  (root / "train" / "a" / "01.png").write_bytes(b"gone bad later")
  with pytest.raises(BadImageError, match=r"a/01\.png"):
    train.images[np.array([0, 1])]
  config.skip_bad = True
  with pytest.raises(ValueError, match="in_memory=True"):
    load_splits(config)


def _write_csv(root, name, rows, header="filename,label"):
  (root / name).write_text("\n".join([header, *rows]) + "\n")


def test_csv_single_and_multi_label(tmp_path):
  for i in range(4):
    _write_png(tmp_path / "img" / f"{i}.png", i)
  _write_csv(tmp_path, "train.csv", ["img/0.png,cat", "img/1.png,dog",
                                     "img/2.png,cat", "img/3.png,dog"])
  _write_csv(tmp_path, "test.csv", ["img/3.png,dog"])
  splits = load_splits(_config(name="csv", data_dir=str(tmp_path)))
  assert splits["train"].labels.tolist() == [0, 1, 0, 1]
  assert splits["train"].class_names == ("cat", "dog")

  _write_csv(tmp_path, "train.csv", ["img/0.png,cat|outdoor", "img/1.png,dog",
                                     "img/2.png,outdoor"], "file,tags")
  _write_csv(tmp_path, "test.csv", ["img/3.png,dog|cat"], "file,tags")
  config = _config(name="csv", data_dir=str(tmp_path), file_column="file",
                   label_column="tags")
  with pytest.raises(ValueError, match=r"train.csv:2: .*multi_label=True"):
    load_splits(config)
  config.multi_label = True
  splits = load_splits(config)
  assert splits["train"].class_names == ("cat", "dog", "outdoor")
  assert splits["train"].labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
  assert splits["test"].labels.tolist() == [[1, 1, 0]]


def test_csv_unknown_class_missing_file_and_column_are_named(tmp_path):
  for i in range(3):
    _write_png(tmp_path / f"{i}.png", i)
  _write_csv(tmp_path, "train.csv", ["0.png,cat", "1.png,dog"])
  _write_csv(tmp_path, "test.csv", ["2.png,cat", "0.png,bird"])
  config = _config(name="csv", data_dir=str(tmp_path))
  with pytest.raises(UnknownClassError, match=r"test.csv:3: class 'bird'"):
    load_splits(config)
  config.skip_bad = True
  with pytest.warns(SkippedImagesWarning, match="skipped 1 rows"):
    assert len(load_splits(config)["test"]) == 1

  _write_csv(tmp_path, "test.csv", ["2.png,cat", "missing.png,dog"])
  config.skip_bad = False
  with pytest.raises(BadImageError, match=r"missing\.png"):
    load_splits(config)
  config.skip_bad = True
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert len(load_splits(config)["test"]) == 1
  assert any("skipped 1 of 2" in str(w.message) for w in caught)

  config.label_column = "class"
  with pytest.raises(ValueError, match=r"train.csv: no column 'class'"):
    load_splits(config)
