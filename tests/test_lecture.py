"""The lecture experiments (experiments/lecture/) at smoke settings, and the
pieces they compute. Experiments that train models are marked slow (each
trains two tiny models: tens of seconds); run them with -m slow."""

import os

import numpy as np
import pytest

from cnn_jax.reports import plotting
from cnn_jax.training import train
from experiments import run_all
from experiments.lecture import common
from experiments.lecture import cross_correlation
from experiments.lecture import padding_stride
from experiments.lecture import parameter_efficiency
from experiments.lecture import pooling_invariance
from experiments.lecture import transfer
from experiments.lecture import augmentation


def _pngs_in(folder):
  return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


def _check_result(result, *pngs):
  assert isinstance(result, common.Result) and result.finding
  text = open(result.path, encoding="utf-8").read()
  assert result.finding in text
  folder = os.path.dirname(result.path)
  for name in pngs:
    assert f"({name})" in text
    assert plotting.png_size(os.path.join(folder, name))[0] > 100
  return text


def test_cross_correlation_worked_example(tmp_path):
  result = cross_correlation.run(str(tmp_path), smoke=True)
  text = _check_result(result, "worked_example.png", "digit_edges.png")
  assert "[[0, 0, 2, 0], [0, 0, 2, 0], [0, 1, 1, 0]]" in result.finding
  assert "[0, 1, 2, 0]" in text and "slip" in text  # the slide's error
  assert "[0, -1, -1, 0]" in text  # the true convolution's last row


def test_receptive_field_formula():
  rf = padding_stride.receptive_field
  assert [r for r, _ in rf([(3, 1, 1)] * 4)] == [3, 5, 7, 9]
  assert rf([(3, 1, 1), (2, 2, 1), (3, 1, 1)]) == [(3, 1), (4, 2), (8, 2)]
  assert rf([(3, 1, 2 ** i) for i in range(3)])[-1] == (15, 1)
  measured, _ = padding_stride.measured_receptive_field(
      [(3, 1, 1), (2, 2, 1), (3, 1, 1)], 16)
  assert measured == 8


def test_padding_stride_smoke(tmp_path):
  result = padding_stride.run(str(tmp_path), smoke=True)
  text = _check_result(result, "receptive_field.png",
                       "effective_receptive_field.png")
  assert "| ResNet stem: 7x7, stride 2, p=3 | 224 | 7 | 3 | 2 | 1 | 112 | 112 |" \
      in text


def test_shift_images_moves_and_zero_fills():
  images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) + 1
  right = pooling_invariance.shift_images(images, 0, 1)
  np.testing.assert_array_equal(right[:, :, 1:], images[:, :, :-1])
  assert not right[:, :, 0].any()
  up = pooling_invariance.shift_images(images, -2, 0)
  np.testing.assert_array_equal(up[:, :2], images[:, 2:])
  assert not up[:, 2:].any()
  dataset, keys = pooling_invariance.shifted_set(images, np.array([3, 4]),
                                                 (0, 1))
  assert keys[0] == (0, "right") and len(keys) == 5
  assert len(dataset) == 10 and list(dataset.labels[:4]) == [3, 4, 3, 4]


def test_equal_budget_models():
  base = common.mnist_config("unused", smoke=False, num_epochs=1)
  cnn = common.with_model(base, name="simple_cnn", num_classes=10,
                          features=(8, 16), hidden=32)
  # conv 8*9+8, conv 16*8*9+16, dense 784*32+32, head 32*10+10.
  budget = parameter_efficiency.model_params(cnn.model)
  assert budget == 80 + 1168 + 25120 + 330
  width = parameter_efficiency.matched_mlp_width(budget)
  mlp = common.with_model(base, name="simple_cnn", num_classes=10,
                          features=(), hidden=width)
  assert parameter_efficiency.model_params(mlp.model) == 795 * width + 10
  assert abs(795 * width + 10 - budget) <= 795 // 2
  no_pool = common.with_model(base, name="simple_cnn", num_classes=10,
                              features=(8, 16), hidden=32, pool=False)
  assert parameter_efficiency.model_params(no_pool.model) == (
      80 + 1168 + (28 * 28 * 16 * 32 + 32) + 330)
  assert parameter_efficiency.flax_counts(100, 100, units=10) == (
      100 * 100 * 10 + 10, 9 * 10 + 10)


def test_transfer_is_skipped_without_its_script(tmp_path, monkeypatch):
  monkeypatch.setattr(transfer, "SCRIPT", "experiments/no_such_script.py")
  result = transfer.run(str(tmp_path), smoke=True)
  assert result.skipped and "Skipped" in result.finding


class _FakeExperiment:
  """An experiment module's interface, instantly: run(out, smoke) -> Result."""

  @staticmethod
  def run(out, smoke=False):
    return common.write_result(out, "fake", "0. Fake", "a | b", [],
                               common.clock())


class _BrokenExperiment:

  @staticmethod
  def run(out, smoke=False):
    raise RuntimeError("no data")


def test_run_all_writes_an_index(tmp_path, monkeypatch):
  assert list(run_all.EXPERIMENTS) == [
      "cross_correlation", "parameter_efficiency", "pooling_invariance",
      "augmentation", "padding_stride", "transfer"]
  monkeypatch.setattr(run_all, "EXPERIMENTS", {
      "fake": _FakeExperiment, "broken": _BrokenExperiment})
  results, index = run_all.run_all(str(tmp_path), smoke=True)
  text = open(index, encoding="utf-8").read()
  assert "[0. Fake](fake/result.md)" in text
  assert "a \\| b" in text  # the finding, '|' escaped in the table
  assert "FAILED: RuntimeError: no data" in text
  assert "Smoke settings" in text
  assert results["fake"].finding == "a | b"
  with pytest.raises(ValueError, match="unknown experiment"):
    run_all.run_all(str(tmp_path), smoke=True, only=["pooling"])


@pytest.mark.slow
def test_parameter_efficiency_smoke(tmp_path):
  result = parameter_efficiency.run(str(tmp_path), smoke=True)
  text = _check_result(result, "parameter_counts.png", "equal_budgets.png")
  assert "100,000,100" in result.finding and "1,000" in result.finding
  assert "| CNN |" in text and "| MLP |" in text
  # Rerunning reuses the finished runs.
  again = parameter_efficiency.run(str(tmp_path), smoke=True)
  assert again.finding == result.finding


@pytest.mark.slow
def test_pooling_invariance_smoke(tmp_path):
  result = pooling_invariance.run(str(tmp_path), smoke=True)
  _check_result(result, "shift_stability.png", "shift_examples.png")
  assert "max-pooling" in result.finding


@pytest.mark.slow
def test_augmentation_smoke(tmp_path):
  result = augmentation.run(str(tmp_path), smoke=True)
  _check_result(result, "accuracy.png", "loss.png", "augmented_examples.png")
  summary = train.workdirs.read_summary(tmp_path / "runs" / "augmented")
  assert summary["config"]["data"]["augment"]["crop_padding"] == 4
  summary = train.workdirs.read_summary(tmp_path / "runs" / "plain")
  assert summary["config"]["data"]["augment"]["crop_padding"] == 0
