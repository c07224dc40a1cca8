"""TFDS imagenet2012 (array-record, images of varying sizes) through the
Grain pipeline (data/tfds_images.py), on a tiny copy written from a
generated ImageNet-layout folder (data/tfds_write.py; no network, no
TensorFlow): the records' bytes and labels are the folder's, the batches
equal the folder's bitwise, the worker count changes nothing, and damaged
records are named or skipped and counted."""

import os
import shutil
import sys
import warnings

import ml_collections
import numpy as np
import pytest

from cnn_jax.data import decode
from cnn_jax.data import grain_pipeline
from cnn_jax.data import load_splits
from cnn_jax.data import photo_like
from cnn_jax.data import tfds_images
from cnn_jax.data import tfds_write
from cnn_jax.data.image_files import SkippedImagesWarning
from tests.data import test_grain_pipeline

_SIZE = (24, 24)
_CROP = decode.HostAugment(image_size=_SIZE, crop_scale=(0.08, 1.0),
                           flip=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  # 3 classes x 4 training JPEGs of 84-120 x 63-90 pixels (sizes vary).
  return photo_like.write_imagenet_folder(
      str(tmp_path_factory.mktemp("folder")), num_classes=3, per_class=4,
      val_per_class=2, size=(120, 90), seed=1)


@pytest.fixture(scope="module")
def tfds_dir(folder, tmp_path_factory):
  return tfds_write.write_tfds_imagenet(
      str(tmp_path_factory.mktemp("tfds")), folder)


def _data_config(data_dir, name="tfds", **overrides):
  return ml_collections.ConfigDict({
      "name": name, "data_dir": data_dir, "tfds_name": "imagenet2012",
      "tfds_test_split": "validation", "pipeline": "grain",
      "image_size": _SIZE, "channels": 3, "test_folder": "val",
      "eval_crop_fraction": 0.875, "num_workers": 2, **overrides})


def _folder_in_tfds_order(folder, tfds_split, split="train"):
  """The folder's split, reordered as the TFDS split's records (TFDS
  shuffles the examples when it writes them)."""
  files = load_splits(_data_config(folder, "image_folder"))
  data = files["train" if split == "train" else "test"]
  names = [os.path.basename(p) for p in data.images.paths]
  order = [names.index(tfds_split.images.records.read(i)["file_name"]
                       .decode()) for i in range(len(tfds_split))]
  return data.subset(order)


def _grain(dataset, workers=0, count=6, process_index=0, process_count=1,
           **options):
  return list(grain_pipeline.train_batches(
      dataset, 4, seed=5, num_batches=count, augment=_CROP,
      options=grain_pipeline.GrainOptions(workers=workers, **options),
      process_index=process_index, process_count=process_count))


_same_batches = test_grain_pipeline._same_batches  # pylint: disable=protected-access


def test_records_hold_the_folders_jpeg_bytes_and_labels(folder, tfds_dir):
  splits = load_splits(_data_config(tfds_dir))
  assert "tensorflow" not in sys.modules  # never imported
  train = splits["train"]
  assert len(train) == 12 and len(splits["test"]) == 6
  assert isinstance(train.images, tfds_images.EncodedImages)
  assert train.class_names[:2] == ("n01440764", "n01443537")  # ImageNet's
  files = dict((os.path.basename(p), (p, label)) for p, label in
               tfds_write.folder_files(folder, "train"))
  sizes = set()
  for i in range(len(train)):
    source, name = train.images.encoded(i)
    assert name == f"TFDS imagenet2012/train record {i}"
    path, label = files[train.images.records.read(i)["file_name"].decode()]
    with open(path, "rb") as f:
      assert source.read() == f.read()
    assert train.labels[i] == label
    sizes.add(decode.decode_file(path, decode.HostAugment()).shape)
  assert len(sizes) > 1  # the images vary in size
  with pytest.raises(ValueError, match=r"imagenet2012/train has no feature "
                     r"'labels' \(config.data.tfds_label_key\)"):
    load_splits(_data_config(tfds_dir, tfds_label_key="labels"))


def test_batches_equal_the_image_folders_bitwise(folder, tfds_dir):
  train = load_splits(_data_config(tfds_dir))["train"]
  files = _folder_in_tfds_order(folder, train)
  from_tfds = _grain(train)  # 2 epochs: random-resized crops and flips
  assert from_tfds[0][1]["image"].shape == (4, *_SIZE, 3)
  _same_batches(from_tfds, _grain(files))
  # Two worker processes (each opens the TFDS source itself): the same.
  _same_batches(_grain(train, workers=2), from_tfds)
  # Two hosts: each reads its rows of every global batch.
  halves = [_grain(train, process_index=p, process_count=2) for p in (0, 1)]
  for (_, whole), (_, first), (_, second) in zip(from_tfds, *halves):
    np.testing.assert_array_equal(
        whole["image"], np.concatenate([first["image"], second["image"]]))


def test_evaluation_reads_the_folders_center_crops(folder, tfds_dir):
  test = load_splits(_data_config(tfds_dir))["test"]
  files = _folder_in_tfds_order(folder, test, "test")
  everything = np.arange(len(test))
  np.testing.assert_array_equal(test.images[everything],
                                files.images[everything])
  np.testing.assert_array_equal(test.labels, files.labels)


def test_a_corrupt_image_is_named_or_skipped_and_counted(folder, tmp_path):
  data_dir = tfds_write.write_tfds_imagenet(
      str(tmp_path), folder, replace={"n00000001_2.JPEG": b"not a JPEG"})
  train = load_splits(_data_config(data_dir))["train"]
  bad = [i for i in range(len(train)) if train.images.records.read(i)[
      "file_name"] == b"n00000001_2.JPEG"][0]
  name = f"TFDS imagenet2012/train record {bad}: cannot be read as an image"
  with pytest.raises(decode.BadImageError, match=name):
    _grain(train)
  with pytest.raises(decode.BadImageError, match=name):  # from a worker
    _grain(train, workers=1)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    batches = _grain(train, skip_bad=True)
  skips = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
  assert len(batches) == 6 and len(skips) == 2  # once per epoch
  assert f"record {bad}" in str(skips[0].message)


def _damage(data_dir):
  """Flips bytes inside one record's chunk of the training file:
  array-record's chunk checksum then fails for that record only. (The 12
  records' chunks fill the file's first ~66 KB; riegeli's block headers,
  every 64 KiB, are avoided: a bad one fails every read.)"""
  version_dir = os.path.join(data_dir, "imagenet2012", "5.1.0")
  path = os.path.join(version_dir,
                      "imagenet2012-train.array_record-00000-of-00001")
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = 40_000
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in
                                     data[middle:middle + 64])
    f.seek(0)
    f.write(data)


def test_a_damaged_record_is_named_or_skipped_and_counted(tfds_dir,
                                                         tmp_path):
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tfds_dir, data_dir)
  _damage(data_dir)
  train = load_splits(_data_config(data_dir))["train"]  # reads record 0
  name = (r"TFDS imagenet2012/train record \d+: cannot be read "
          r"\(RuntimeError: Corrupted Riegeli")
  with pytest.raises(decode.BadImageError, match=name):
    _grain(train)
  with pytest.raises(decode.BadImageError, match=name):  # all labels
    np.asarray(train.labels)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    batches = _grain(train, skip_bad=True)
  skips = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
  assert len(batches) == 6 and len(skips) == 2  # once per epoch


class _CountingSource:
  """A tfds data source that records which indices were read."""

  def __init__(self, source):
    self.source, self.reads = source, []
    self.dataset_info = source.dataset_info

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads.append(index)
    return self.source[index]


def test_records_are_read_when_used_and_once(tfds_dir, monkeypatch):
  opened = {}
  open_split = tfds_images.tfds_source.open_split

  def counting(tfds, name, split, data_dir, **kwargs):
    opened[split] = _CountingSource(open_split(tfds, name, split, data_dir,
                                               **kwargs))
    return opened[split]
  monkeypatch.setattr(tfds_images.tfds_source, "open_split", counting)
  splits = load_splits(_data_config(tfds_dir))
  # Loading reads one record per split (its label feature is checked).
  assert opened["train"].reads == [0] and opened["validation"].reads == [0]
  train = splits["train"]
  read = []
  for i in (3, 5):  # a worker's reads: the image, then the label
    train.images.encoded(i)
    read.append(train.labels[i])
  assert opened["train"].reads == [0, 3, 5]
  np.testing.assert_array_equal(read, np.asarray(train.labels)[[3, 5]])
  # Evaluation: the split's labels in one pass, then kept.
  test = splits["test"]
  labels = np.asarray(test.labels)
  assert labels.shape == (6,) and labels.dtype == np.int32
  reads = len(opened["validation"].reads)
  assert sorted(set(opened["validation"].reads)) == list(range(6))
  assert reads <= 7  # record 0 may still be the kept last record
  np.testing.assert_array_equal(test.labels[np.arange(6)], labels)
  assert len(opened["validation"].reads) == reads
