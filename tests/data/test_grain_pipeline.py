"""The Grain pipeline (data/grain_pipeline.py, decode.py): the in-memory
iterator's order, process shards, worker-count invariance, resuming from the
iterator state, bad files and dead workers."""

import itertools
import os
import warnings

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cnn_jax.data import batching
from cnn_jax.data import decode
from cnn_jax.data import grain_pipeline
from cnn_jax.data import input_pipeline
from cnn_jax.data import photo_like
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.folder import load_image_folder
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.image_files import SkippedImagesWarning


def _arrays(n=23, seed=0):
  rng = np.random.default_rng(seed)
  return ArrayDataset(rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
                      np.arange(n, dtype=np.int32), "arrays/train")


def _grain(dataset, batch_size=4, count=None, workers=0, start=None,
           augment=None, **kwargs):
  per_epoch = batching.steps_per_epoch(len(dataset), batch_size)
  return list(grain_pipeline.train_batches(
      dataset, batch_size, seed=3,
      start=start or batching.IteratorPosition(),
      num_batches=count or 3 * per_epoch, augment=augment,
      options=grain_pipeline.GrainOptions(workers=workers,
                                          skip_bad=kwargs.pop("skip_bad",
                                                              False)),
      **kwargs))


def _same_batches(a, b):
  assert len(a) == len(b)
  for (pa, ba), (pb, bb) in zip(a, b):
    assert (pa.epoch, pa.batch) == (pb.epoch, pb.batch)
    np.testing.assert_array_equal(ba["image"], bb["image"])
    np.testing.assert_array_equal(ba["label"], bb["label"])


def test_same_batches_as_the_in_memory_iterator():
  data = _arrays()
  got = _grain(data)  # 3 epochs of 5 batches; 23 % 4 = 3 dropped per epoch
  expected = list(itertools.islice(batching.train_batches(data, 4, 3), 15))
  _same_batches(got, expected)
  assert set(got[0][1]) == {"image", "label"}
  for epoch in range(3):
    labels = np.concatenate([b["label"] for _, b in got[5 * epoch:
                                                          5 * epoch + 5]])
    assert len(set(labels)) == 20  # each example at most once, 3 left out
  assert got[-1][0] == batching.IteratorPosition(3, 0, got[-1][0].state)


def test_process_shards_union_is_the_global_batch():
  data = _arrays()
  whole = _grain(data)
  shards = [_grain(data, process_index=p, process_count=2) for p in (0, 1)]
  for p in (0, 1):
    assert shards[p][0][1]["image"].shape == (2, 6, 5, 3)
  for (_, batch), (_, first), (_, second) in zip(whole, *shards):
    np.testing.assert_array_equal(
        batch["label"], np.concatenate([first["label"], second["label"]]))
    np.testing.assert_array_equal(
        batch["image"], np.concatenate([first["image"], second["image"]]))
  with pytest.raises(ValueError, match="batch_size=4.*3 processes"):
    _grain(data, process_index=0, process_count=3)


def test_resume_mid_epoch_from_the_iterator_state():
  data = _arrays()
  whole = _grain(data)
  position = whole[6][0]  # after batch 1 of epoch 1
  assert position.state["iterator"] == {"next_index": 7}
  _same_batches(_grain(data, start=position), whole[7:])
  # Without a state (the in-memory iterator's checkpoint): from the position.
  bare = batching.IteratorPosition(position.epoch, position.batch)
  _same_batches(_grain(data, start=bare), whole[7:])


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  return photo_like.write_imagenet_folder(str(root), num_classes=2,
                                          per_class=6, val_per_class=1,
                                          size=(64, 48))


def _files(root, **options):
  return load_image_folder(root, ImageOptions(
      image_size=(16, 16), pipeline="grain", **options))["train"]


_CROP = decode.HostAugment(image_size=(16, 16), crop_scale=(0.08, 1.0),
                           flip=True)


def test_worker_count_does_not_change_the_batches(jpeg_folder):
  data = _files(jpeg_folder)
  threads = _grain(data, count=4, augment=_CROP)
  assert threads[0][1]["image"].shape == (4, 16, 16, 3)
  assert not np.array_equal(threads[0][1]["image"], threads[3][1]["image"])
  one = _grain(data, count=4, augment=_CROP, workers=1)
  _same_batches(one, threads)
  _same_batches(_grain(data, count=4, augment=_CROP, workers=4), threads)
  # A worker's state resumes a pipeline with as many workers.
  _same_batches(_grain(data, count=4, augment=_CROP, workers=1,
                       start=one[1][0]), threads[2:])


def test_random_crops_are_host_side_and_seeded(jpeg_folder):
  data = _files(jpeg_folder)
  cropped = _grain(data, count=3, augment=_CROP)
  plain = _grain(data, count=3, augment=decode.HostAugment((16, 16)))
  for (_, crop), (_, whole) in zip(cropped, plain):
    np.testing.assert_array_equal(crop["label"], whole["label"])
    assert not np.array_equal(crop["image"], whole["image"])
  _same_batches(_grain(data, count=3, augment=_CROP), cropped)


def _corrupt(root):
  path = os.path.join(root, "train", "n00000001", "n00000001_2.JPEG")
  with open(path, "rb") as f:
    head = f.read(200)
  with open(path, "wb") as f:
    f.write(head)  # a truncated JPEG
  return path


def test_bad_file_is_named_or_skipped_and_counted(tmp_path):
  root = photo_like.write_imagenet_folder(str(tmp_path), 2, 6, 1, (64, 48))
  path = _corrupt(root)
  data = _files(root)
  with pytest.raises(decode.BadImageError, match="n00000001_2.JPEG"):
    _grain(data, augment=_CROP)
  # From a worker process: the worker's error, the file named.
  with pytest.raises(decode.BadImageError, match="n00000001_2.JPEG"):
    _grain(data, augment=_CROP, workers=1)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    batches = _grain(_files(root, skip_bad=True), augment=_CROP,
                     skip_bad=True)
  skips = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
  assert len(batches) == 9 and len(skips) == 3  # once per epoch
  assert path in str(skips[0].message) and "skipped 1 " in str(
      skips[0].message) and "skipped 3 " in str(skips[-1].message)


class _DiesAt:
  """Images whose example `index` kills the process reading it."""

  def __init__(self, images, index):
    self.images, self.index = images, index

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    if i == self.index:
      os._exit(3)  # pylint: disable=protected-access
    return self.images[i]


def test_a_dead_worker_stops_the_run_with_its_exit_code():
  data = _arrays()
  dying = ArrayDataset(_DiesAt(data.images, 5), data.labels, "dying")
  with pytest.raises(RuntimeError, match="exit code 3"):
    _grain(dying, workers=1)


def test_draft_decoding_matches_a_full_decode(tmp_path):
  rng = np.random.default_rng(0)
  pixels = photo_like.photo_like(rng, 400, 300)
  path = str(tmp_path / "photo.jpg")
  Image.fromarray(pixels).save(path, quality=95)
  augment = decode.HostAugment(image_size=(50, 50))
  drafted = decode.decode_file(path, augment).astype(np.float32)
  with Image.open(path) as image:
    full = np.asarray(image.convert("RGB").resize((50, 50),
                                                  Image.Resampling.BILINEAR),
                      np.float32)
  assert drafted.shape == (50, 50, 3)
  assert np.abs(drafted - full).mean() < 4.0  # of 255: a slightly other blur
  # Eval: the center crop of a resize to 50 / 0.875 on the shorter side.
  centre = decode.decode_file(path, augment, eval_fraction=0.875)
  assert centre.shape == (50, 50, 3)
  box = decode.center_box(400, 300, (50, 50), 0.875)
  np.testing.assert_allclose(box, (200 - 131.25, 150 - 131.25, 262.5, 262.5))


def test_random_resized_box_stays_inside_and_follows_the_scale():
  rng = np.random.default_rng(0)
  areas = []
  for _ in range(500):
    left, top, w, h = decode.random_resized_box(rng, 500, 375, (0.08, 1.0),
                                                (3 / 4, 4 / 3))
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    areas.append(w * h / (500 * 375))
  assert 0.07 < min(areas) and max(areas) <= 1.0
  assert 0.4 < np.mean(areas) < 0.6  # the uniform scale's mean is 0.54


def test_both_pipelines_give_process_rows_through_one_interface():
  data = _arrays()
  whole = list(itertools.islice(batching.train_batches(data, 4, 3), 6))
  for name in ("arrays", "grain"):
    config = ml_collections.ConfigDict({"pipeline": name, "batch_size": 4,
                                        "workers": 0})
    shards = [list(itertools.islice(input_pipeline.train_batches(
        config, data, 3, num_batches=6, process_index=p, process_count=2),
                                    6)) for p in (0, 1)]
    for (position, batch), (first_position, first), (_, second) in zip(
        whole, *shards):
      assert (position.epoch, position.batch) == (first_position.epoch,
                                                  first_position.batch)
      np.testing.assert_array_equal(
          batch["label"], np.concatenate([first["label"], second["label"]]))
