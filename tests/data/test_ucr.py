"""UCR/UEA .ts reader, z-normalisation, float data path, configs/ucr.py."""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import augment
from cnn_jax.data import channel_stats
from cnn_jax.data import load_splits
from cnn_jax.data import ucr
from cnn_jax.training import steps
from configs import ucr as ucr_config
from tests.conftest import REPO

UCR_DIR = os.path.join(REPO, "data", "ucr")


def _write(tmp_path, text, name="Toy_TRAIN.ts"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


_HEADER = ("# a comment\n@problemName Toy\n@timeStamps false\n"
           "@missing false\n@univariate true\n@equalLength true\n"
           "@seriesLength 3\n@classLabel true a b\n@data\n")


def test_reads_gunpoint_counts_and_length():
  train_file = ucr.read_ts(os.path.join(UCR_DIR, "GunPoint",
                                        "GunPoint_TRAIN.ts"))
  test_file = ucr.read_ts(os.path.join(UCR_DIR, "GunPoint",
                                       "GunPoint_TEST.ts"))
  assert train_file.series.shape == (50, 150, 1)
  assert test_file.series.shape == (150, 150, 1)
  assert train_file.class_labels == ("1", "2")
  assert sorted(set(train_file.labels)) == ["1", "2"]
  # The first value of the first series, as printed in the file.
  assert train_file.series[0, 0, 0] == pytest.approx(-0.6478854)


def test_reads_multivariate_basicmotions():
  splits = ucr.load_ucr(UCR_DIR, "BasicMotions")
  assert splits["train"].images.shape == (40, 100, 6)
  assert splits["test"].images.shape == (40, 100, 6)
  assert splits["train"].class_names == ("Standing", "Running", "Walking",
                                         "Badminton")
  assert np.bincount(splits["train"].labels).tolist() == [10, 10, 10, 10]


def test_parses_every_shipped_set():
  expected = {"GunPoint": (50, 150, 150, 1, 2),
              "ItalyPowerDemand": (67, 1029, 24, 1, 2),
              "ArrowHead": (36, 175, 251, 1, 3),
              "OSULeaf": (200, 242, 427, 1, 6),
              "BasicMotions": (40, 40, 100, 6, 4)}
  assert set(expected) <= set(ucr.list_sets(UCR_DIR))
  for name, (n_train, n_test, length, dims, classes) in expected.items():
    splits = ucr.load_ucr(UCR_DIR, name)
    assert splits["train"].images.shape == (n_train, length, dims), name
    assert splits["test"].images.shape == (n_test, length, dims), name
    assert splits["train"].images.dtype == np.float32
    assert len(splits["train"].class_names) == classes
    assert ucr_config.UCR_SETS[name][0] == classes


def test_malformed_value_names_the_line(tmp_path):
  path = _write(tmp_path, _HEADER + "1,2,3:a\n1,x,3:b\n")
  with pytest.raises(ucr.TsFormatError, match=r"Toy_TRAIN.ts:11: 'x' is not"):
    ucr.read_ts(path)


@pytest.mark.parametrize("line, message", [
    ("1,2:a", r":11: 2 time steps, but @seriesLength is 3"),
    ("1,2,3:c", r":11: class label 'c' is not among"),
    ("1,2,3:4,5,6:a", r":11: 2 dimensions, expected 1"),
    ("1,?,3:a", r":11: missing value"),
])
def test_rejects_bad_lines_with_line_number(tmp_path, line, message):
  path = _write(tmp_path, _HEADER + "1,2,3:a\n" + line + "\n")
  with pytest.raises(ucr.TsFormatError, match=message):
    ucr.read_ts(path)


def test_header_after_data_and_missing_data_line(tmp_path):
  with pytest.raises(ucr.TsFormatError, match=r":11: header line"):
    ucr.read_ts(_write(tmp_path, _HEADER + "1,2,3:a\n@data\n"))
  with pytest.raises(ucr.TsFormatError, match="no '@data' line"):
    ucr.read_ts(_write(tmp_path, "@problemName Toy\n"))


def test_variable_length_is_rejected_or_padded_explicitly():
  with pytest.raises(ucr.TsFormatError,
                     match=r"JapaneseVowels_TRAIN.ts:\d+: \d+ time steps.*"
                     r"variable_length='pad'"):
    ucr.load_ucr(UCR_DIR, "JapaneseVowels")
  raw = ucr.read_ts(os.path.join(UCR_DIR, "JapaneseVowels",
                                 "JapaneseVowels_TRAIN.ts"),
                    variable_length="pad")
  assert raw.series.shape[0] == 270 and raw.series.shape[2] == 12
  assert raw.lengths.min() < raw.lengths.max() == raw.series.shape[1]
  # Padding is NaN in the raw read: never mistaken for data.
  short = int(np.argmin(raw.lengths))
  assert np.isnan(raw.series[short, raw.lengths[short]:]).all()
  splits = ucr.load_ucr(UCR_DIR, "JapaneseVowels", variable_length="pad")
  assert splits["train"].images.shape[1] == splits["test"].images.shape[1]
  assert np.isfinite(splits["train"].images).all()
  # After z-normalisation the padding is 0 (the series mean).
  assert not splits["train"].images[short, raw.lengths[short]:].any()


def test_z_normalize_per_series_and_dimension():
  rng = np.random.default_rng(0)
  series = rng.normal(5.0, 3.0, (4, 50, 2)).astype(np.float32)
  series[1, :, 0] = 7.0  # constant: becomes 0, not NaN
  out = ucr.z_normalize(series)
  np.testing.assert_allclose(out[[0, 2, 3]].mean(axis=1), 0, atol=1e-5)
  np.testing.assert_allclose(out[[0, 2, 3]].std(axis=1), 1, atol=1e-5)
  assert not out[1, :, 0].any()
  # Over the valid part only, zeros after it.
  out = ucr.z_normalize(series, lengths=[50, 50, 20, 50])
  np.testing.assert_allclose(out[2, :20].mean(axis=0), 0, atol=1e-5)
  assert not out[2, 20:].any()


def test_float_series_pass_through_normalisation_unscaled():
  """Measured stats of float data undo normalize's /255: (x - mean) / std."""
  splits = load_splits(ucr_config.get_config("BasicMotions").data)
  x = splits["train"].images
  mean, std = channel_stats(x)
  out = np.asarray(augment.normalize(jnp.asarray(x), mean, std))
  flat = x.reshape(-1, x.shape[-1])
  np.testing.assert_allclose(out, (x - flat.mean(0)) / flat.std(0),
                             rtol=1e-3, atol=1e-3)
  # No augmentation is on, so the series reach the network unchanged.
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      augment.augment_batch(jnp.asarray(x[:4]), key,
                            ucr_config.get_config().data.augment.to_dict()),
      x[:4])


def test_unknown_set_is_named():
  config = ucr_config.get_config()
  config.data.ucr_name = "GunPiont"
  with pytest.raises(FileNotFoundError, match="GunPiont.*GunPoint"):
    load_splits(config.data)
  config.data.ucr_name = ""
  with pytest.raises(ValueError, match="config.data.ucr_name is empty"):
    load_splits(config.data)


@pytest.mark.parametrize("model_name", ["cnn1d", "resnet1d"])
def test_1d_models_shapes_on_config(model_name):
  config = ucr_config.get_config("BasicMotions")
  config.model.name = model_name
  model = steps.create_model(config.model)
  x = jnp.zeros((3, 100, 6))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  logits = jax.eval_shape(functools.partial(model.apply, train=False),
                          variables, x)
  chex.assert_shape(logits, (3, 4))


def test_config_runs_one_train_step():
  config = ucr_config.get_config("ItalyPowerDemand")
  splits = load_splits(config.data)
  train_set = splits["train"]
  mean, std = steps.normalization_stats(config.data, train_set)
  state, _ = steps.create_train_state(config, jax.random.key(0),
                                      train_set.example_shape, 4)
  batch = {"image": train_set.images[:16], "label": train_set.labels[:16]}
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict()))
  state, metrics = step(state, batch)
  chex.assert_tree_all_finite(metrics)
  assert int(state.step) == 1
