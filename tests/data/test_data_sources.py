"""Every source gives the same batches from the same data: npz, image folder,
CSV, MNIST IDX, the bundled CIFAR-10 subset; held-out splits are fixed."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import SOURCES
from cnn_jax.data import batching
from cnn_jax.data import cifar
from cnn_jax.data import load_splits
from tests.conftest import write_idx

CLASSES = ("ant", "bee", "cat")


def _toy_arrays(n, seed):
  """n images 8x8x3 sorted by class, labels 0..2 (sorted, like a folder)."""
  rng = np.random.default_rng(seed)
  labels = np.sort(rng.integers(0, 3, n)).astype(np.int32)
  images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  return images, labels


def write_all_layouts(root):
  """The same train (30) / test (9) data as an npz, PNG folders and CSVs."""
  arrays = {"train": _toy_arrays(30, 0), "test": _toy_arrays(9, 1)}
  np.savez(root / "toy.npz", x_train=arrays["train"][0],
           y_train=arrays["train"][1], x_test=arrays["test"][0],
           y_test=arrays["test"][1])
  for split, (images, labels) in arrays.items():
    rows = ["filename,label"]
    for i, (image, label) in enumerate(zip(images, labels)):
      relative = os.path.join(split, CLASSES[label], f"{i:03d}.png")
      os.makedirs(root / "folders" / os.path.dirname(relative), exist_ok=True)
      Image.fromarray(image).save(root / "folders" / relative)
      rows.append(f"{relative},{CLASSES[label]}")
    (root / "folders" / f"{split}.csv").write_text("\n".join(rows) + "\n")
  return arrays


def _config(**values):
  return ml_collections.ConfigDict(values)


def _batches(dataset, k=6, seed=0, start=batching.IteratorPosition()):
  iterator = batching.train_batches(dataset, 8, seed, start)
  return [next(iterator) for _ in range(k)]


def _assert_same_batches(a, b):
  for (pos_a, batch_a), (pos_b, batch_b) in zip(a, b):
    assert pos_a == pos_b
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
    np.testing.assert_array_equal(batch_a["label"], batch_b["label"])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  return root, write_all_layouts(root)


def test_sources_table_holds_the_image_sources():
  assert {"mnist", "cifar10", "npz", "image_folder", "csv",
          "tfds"} <= set(SOURCES)


def test_npz_folder_and_csv_give_identical_batches(toy):
  root, arrays = toy
  loaded = {
      "npz": load_splits(_config(name="npz", data_dir=str(root / "toy.npz"))),
      "image_folder": load_splits(_config(
          name="image_folder", data_dir=str(root / "folders"), num_workers=2)),
      "csv": load_splits(_config(name="csv", data_dir=str(root / "folders"),
                                 cache_dir=str(root / "cache"))),
  }
  for name, splits in loaded.items():
    for split in ("train", "test"):
      np.testing.assert_array_equal(splits[split].images, arrays[split][0],
                                    err_msg=name)
      np.testing.assert_array_equal(splits[split].labels, arrays[split][1],
                                    err_msg=name)
      assert splits[split].images.dtype == np.uint8
      assert splits[split].labels.dtype == np.int32
  assert loaded["image_folder"]["train"].class_names == CLASSES
  reference = _batches(loaded["npz"]["train"])
  for name in ("image_folder", "csv"):
    _assert_same_batches(reference, _batches(loaded[name]["train"]))


def test_mnist_idx_source_matches_npz_batches(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (30, 28, 28)).astype(np.uint8)
  labels = rng.integers(0, 10, 30).astype(np.uint8)
  for prefix in ("train", "t10k"):
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
  np.savez(tmp_path / "same.npz", x_train=images, y_train=labels,
           x_test=images, y_test=labels)
  idx_splits = load_splits(_config(name="mnist", data_dir=str(tmp_path)))
  npz_splits = load_splits(_config(name="npz",
                                   data_dir=str(tmp_path / "same.npz")))
  _assert_same_batches(_batches(idx_splits["train"]),
                       _batches(npz_splits["train"]))


def test_each_source_is_deterministic_shuffles_per_epoch_and_resumes(toy):
  root, _ = toy
  for config in (_config(name="npz", data_dir=str(root / "toy.npz")),
                 _config(name="image_folder", data_dir=str(root / "folders"),
                         in_memory=False),
                 _config(name="cifar10", data_dir="")):
    data = load_splits(config)["train"]
    straight = _batches(data, k=10)
    _assert_same_batches(straight, _batches(data, k=10))  # same seed
    assert not np.array_equal(  # another seed, another order
        np.concatenate([b["label"] for _, b in _batches(data, 3, seed=1)]),
        np.concatenate([b["label"] for _, b in straight[:3]]))
    position, _ = straight[3]  # resume after the 4th batch
    _assert_same_batches(straight[4:], _batches(data, k=6, start=position))


def test_epochs_of_a_folder_source_differ(toy):
  root, _ = toy
  data = load_splits(_config(name="image_folder",
                             data_dir=str(root / "folders")))["train"]
  batches = _batches(data, k=6)  # 30 // 8 = 3 batches per epoch
  assert batches[2][0] == batching.IteratorPosition(1, 0)
  epoch0 = np.concatenate([b["image"] for _, b in batches[:3]])
  epoch1 = np.concatenate([b["image"] for _, b in batches[3:]])
  assert not np.array_equal(epoch0, epoch1)


def test_bundled_cifar10_subset_is_the_documented_data():
  splits = load_splits(_config(name="cifar10", data_dir=""))
  train, test = splits["train"], splits["test"]
  assert train.images.shape == (4000, 32, 32, 3)
  assert test.images.shape == (1000, 32, 32, 3)
  assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
  assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
  assert train.images[0, 0, :3].tolist() == [[59, 62, 63], [43, 46, 45],
                                             [50, 48, 43]]
  assert train.class_names == cifar.CLASS_NAMES


def test_val_split_is_fixed_disjoint_and_complete(toy):
  root, _ = toy
  config = _config(name="npz", data_dir=str(root / "toy.npz"),
                   val_fraction=0.2)
  a, b = load_splits(config), load_splits(config)
  assert set(a) == {"train", "test", "val"}
  assert (len(a["train"]), len(a["val"])) == (24, 6)
  np.testing.assert_array_equal(a["val"].images, b["val"].images)
  rows = {x.tobytes() for x in a["train"].images}
  assert not rows & {x.tobytes() for x in a["val"].images}
  assert len(rows | {x.tobytes() for x in a["val"].images}) == 30


def test_folder_without_test_split_gets_one_carved_from_train(toy):
  root, _ = toy
  splits = load_splits(_config(name="image_folder",
                               data_dir=str(root / "folders" / "train"),
                               test_fraction=0.3))
  assert (len(splits["train"]), len(splits["test"])) == (21, 9)


def test_npz_with_user_chosen_keys_and_clear_errors(tmp_path):
  images = np.zeros((5, 4, 4), np.uint8)
  labels = np.arange(5).reshape(5, 1)
  np.savez(tmp_path / "med.npz", train_images=images, train_labels=labels,
           test_images=images, test_labels=labels)
  keys = ("train_images", "train_labels", "test_images", "test_labels")
  splits = load_splits(_config(name="npz", data_dir=str(tmp_path),
                               npz_keys=keys))
  assert splits["train"].images.shape == (5, 4, 4, 1)
  assert splits["train"].labels.tolist() == [0, 1, 2, 3, 4]
  with pytest.raises(ValueError, match=r"med.npz.*'x_train'.*npz_keys"):
    load_splits(_config(name="npz", data_dir=str(tmp_path / "med.npz")))
  np.savez(tmp_path / "float.npz", x_train=images / 1.0, y_train=labels,
           x_test=images, y_test=labels)
  with pytest.raises(ValueError, match=r"float.npz\['x_train'\].*uint8"):
    load_splits(_config(name="npz", data_dir=str(tmp_path / "float.npz")))


def test_unknown_source_and_missing_dir_are_named(tmp_path):
  with pytest.raises(ValueError, match="config.data.name='imagenet'"):
    load_splits(_config(name="imagenet", data_dir=""))
  with pytest.raises(ValueError, match="config.data.data_dir"):
    load_splits(_config(name="image_folder", data_dir=""))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_splits(_config(name="csv", data_dir=str(tmp_path / "nowhere")))
