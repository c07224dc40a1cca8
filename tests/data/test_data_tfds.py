"""The TFDS source on tfds.testing.mock_data: no TensorFlow, deterministic
batches, one training run per dataset, and a clear 'not prepared' error."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax.data import batching
from cnn_jax.data import input_pipeline
from cnn_jax.data import load_splits
from cnn_jax.data.lazy import LazyImages
from cnn_jax.training import train
from configs import tfds_mnist


def _mock(num_examples=32):
  # USE_CODE: the examples follow the builder's features (no metadata files
  # needed); data_source reads through the mocked array-record source.
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def _tiny_config(tfds_name="mnist"):
  config = tfds_mnist.get_config()
  config.data.tfds_name = tfds_name
  config.data.batch_size = 16
  config.data.eval_batch_size = 16
  config.data.num_workers = 2
  config.train.num_epochs = 1
  config.train.log_every_steps = 1
  return config


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)),
                                        ("cifar10", (32, 32, 3))])
def test_mock_splits_have_the_dataset_shapes_without_tensorflow(name, shape):
  with _mock():
    splits = load_splits(_tiny_config(name).data)
  # The source must never import TensorFlow (even where it is installed).
  assert "tensorflow" not in sys.modules
  for split in ("train", "test"):
    assert splits[split].images.shape == (32, *shape)
    assert splits[split].images.dtype == np.uint8
    assert splits[split].labels.dtype == np.int32
    assert 0 <= splits[split].labels.min() and splits[split].labels.max() < 10


def test_mock_batches_are_deterministic_lazy_or_not():
  config = _tiny_config()
  with _mock():
    eager = load_splits(config.data)["train"]
    config.data.in_memory = False
    lazy = load_splits(config.data)["train"]
    assert isinstance(lazy.images, LazyImages)
    a = list(zip(range(4), batching.train_batches(eager, 8, seed=0)))
    b = list(zip(range(4), batching.train_batches(lazy, 8, seed=0)))
  for (_, (pos_a, batch_a)), (_, (pos_b, batch_b)) in zip(a, b):
    assert pos_a == pos_b
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
    np.testing.assert_array_equal(batch_a["label"], batch_b["label"])


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_tfds_config_trains_one_epoch_on_mock_data(name, tmp_path):
  config = _tiny_config(name)
  config.model.use_batchnorm = name == "cifar10"
  with _mock():
    summary = train.train_and_evaluate(config, str(tmp_path / name))
  assert summary["steps"] == 2
  assert summary["test_examples"] == 32
  assert np.isfinite(summary["test_loss"])
  assert "tensorflow" not in sys.modules


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  config = _tiny_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError,
                     match=r"'mnist'.*not prepared.*tfds build mnist"):
    load_splits(config.data)
  config.data.tfds_name = "mnistt"
  with pytest.raises(ValueError, match="config.data.tfds_name='mnistt'"):
    load_splits(config.data)


def test_grain_pipeline_reads_a_lazy_tfds_split_in_the_same_order():
  # Threads only (data.workers=0): the mock lives in this process. The split
  # is tfds_source's lazily decoded arrays: the mock cannot give encoded
  # images, which data.pipeline='grain' loads (tests/data/test_tfds_images.py
  # covers that on a real array-record copy).
  config = _tiny_config()
  config.data.in_memory = False
  config.data.workers = 0
  with _mock():
    lazy = load_splits(config.data)["train"]
    config.data.pipeline = "grain"
    expected = list(zip(range(4), batching.train_batches(lazy, 16, seed=0)))
    got = list(input_pipeline.train_batches(config.data, lazy, 0,
                                            num_batches=4))
  for (_, (pos_a, batch_a)), (pos_b, batch_b) in zip(expected, got):
    assert (pos_a.epoch, pos_a.batch) == (pos_b.epoch, pos_b.batch)
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
    np.testing.assert_array_equal(batch_a["label"], batch_b["label"])
