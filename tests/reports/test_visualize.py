"""Figures: each plot function writes a PNG of the documented size, from the
model and predictions of one tiny training run (shared with test_report)."""

import os

import numpy as np
import pytest

from cnn_jax.reports import plotting
from cnn_jax.reports import report
from cnn_jax.reports import restored_run
from cnn_jax.reports import visualize
from cnn_jax.reports import visualize_model
from cnn_jax.training import train
from configs import mnist as mnist_config
from tests.conftest import write_idx

# One tiny run per test session, shared by test_visualize and test_report.
_TINY_RUN = {}


def _tiny_mnist(folder):
  """256 train / 100 test 28x28 images; class k is a bright 6x6 square at a
  class-specific position (as conftest's tiny_mnist_dir)."""
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 256), ("t10k", 100)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
      r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
      images[i, r:r + 6, c:c + 6] = 255
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return folder


def tiny_run_config(data_dir):
  config = mnist_config.get_config()
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 32
  config.data.eval_batch_size = 64  # 100 test images: last batch padded
  config.train.num_epochs = 1
  config.train.log_every_steps = 4
  config.model.features = (8, 16)
  config.model.hidden = 32
  if "checkpoint" in config:
    config.checkpoint.async_save = False
  return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(workdir, summary) of a finished 1-epoch run on tiny MNIST-format data:
  simple CNN with 8 then 16 filters."""
  if "run" not in _TINY_RUN:
    root = tmp_path_factory.mktemp("tiny_run")
    data = root / "data"
    data.mkdir()
    workdir = str(root / "run")
    summary = train.train_and_evaluate(tiny_run_config(_tiny_mnist(data)),
                                       workdir)
    _TINY_RUN["run"] = (workdir, summary)
  return _TINY_RUN["run"]


@pytest.fixture(scope="module")
def restored(tiny_run):
  workdir, _ = tiny_run
  run = restored_run.load_run(workdir)
  logits, _ = restored_run.predict(run)
  return run, logits


def _check_png(path, size):
  assert os.path.getsize(path) > 1000
  assert plotting.png_size(path) == size


def test_learning_curves(tiny_run, tmp_path):
  workdir, _ = tiny_run
  records = report.writers.read_metrics(workdir)
  # A 'resumed' marker has no metrics: it must not break the plot.
  records.insert(1, {"step": records[0]["step"], "split": "resumed",
                     "epoch": 0.5})
  path = visualize.plot_learning_curves(records, tmp_path / "curves.png")
  _check_png(path, (1500, 400))


def test_confusion_matrix_counts_and_plot(tmp_path):
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 2, 0])
  matrix = visualize.confusion_matrix(labels, predictions, 3)
  np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  np.testing.assert_allclose(visualize.per_class_accuracy(matrix),
                             [0.5, 1.0, 2 / 3])
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 200)
  predictions = np.where(rng.random(200) < 0.8, labels,
                         rng.integers(0, 10, 200))
  matrix = visualize.confusion_matrix(labels, predictions, 10)
  assert matrix.sum() == 200
  _check_png(visualize.plot_confusion_matrix(matrix, tmp_path / "cm.png"),
             (900, 800))
  _check_png(visualize.plot_per_class_accuracy(
      matrix, tmp_path / "pc.png", class_names=[f"c{k}" for k in range(10)]),
             (800, 400))


def test_misclassified_grid(restored, tmp_path):
  run, logits = restored
  test_set = run.splits["test"]
  predictions = logits.argmax(-1).copy()
  predictions[:7] = (test_set.labels[:7] + 1) % 10  # 7 certain mistakes
  probabilities = report._softmax(logits)  # pylint: disable=protected-access
  path = visualize.plot_misclassified(
      test_set.images, test_set.labels, predictions, tmp_path / "mis.png",
      probabilities=probabilities)
  wrong = int(np.sum(predictions != test_set.labels))
  rows = -(-min(wrong, 24) // 6)
  _check_png(path, (1200, 100 * (2 * rows + 1)))
  # No mistakes: still a figure, saying so.
  path = visualize.plot_misclassified(test_set.images, test_set.labels,
                                      test_set.labels, tmp_path / "none.png")
  _check_png(path, (1200, 300))


def test_first_layer_filters(restored, tmp_path):
  run, _ = restored
  kernel = visualize_model.first_conv_kernel(run.state.params)
  assert kernel.shape == (3, 3, 1, 8)
  # 8 filters on a 3x3 grid: (1.5 * 3 + 1.5) x (1.5 * 3 + 1) inches.
  _check_png(
      visualize_model.plot_filters(kernel, tmp_path / "filters.png"),
      (600, 550))
  rgb = np.random.default_rng(0).normal(size=(5, 5, 3, 16))
  _check_png(visualize_model.plot_filters(rgb, tmp_path / "rgb.png"),
             (750, 700))


def test_feature_maps_of_a_chosen_layer(restored, tmp_path):
  run, _ = restored
  image = run.splits["test"].images[0]
  outputs = visualize_model.intermediates(run.state.apply_fn, run.variables,
                                          run.normalize(image[None]))
  assert {"conv1", "conv2", "dense1", "head"} <= set(outputs)
  maps = visualize_model.feature_maps(run.state.apply_fn, run.variables,
                                      run.normalize(image[None])[0], "conv2")
  # conv2 (conv -> ReLU -> pool, layers.ConvReluMaxPool) on the pooled
  # 14x14 maps gives 7x7 rectified maps.
  assert maps.shape == (7, 7, 16)
  assert float(np.min(maps)) >= 0.0
  # 16 maps on a 4x4 grid: (1.5 * 4 + 3.5) x (1.5 * 4 + 1) inches.
  _check_png(visualize_model.plot_feature_maps(maps, tmp_path / "maps.png",
                                               image, "conv2"), (950, 700))
  with pytest.raises(ValueError, match="conv9.*modules:.*conv1"):
    visualize_model.feature_maps(run.state.apply_fn, run.variables,
                                 run.normalize(image[None])[0], "conv9")


def test_saliency(restored, tmp_path):
  run, _ = restored
  images = run.splits["test"].images[:4]
  maps = visualize_model.saliency(run.state.apply_fn, run.variables,
                                  run.normalize(images))
  assert maps.shape == (4, 28, 28)
  assert np.all(maps >= 0) and np.all(np.isfinite(maps)) and maps.max() > 0
  _check_png(
      visualize_model.plot_saliency(images, maps, tmp_path / "sal.png"),
      (1000, 750))


def test_overlay_heatmap_resizes_and_blends(tmp_path):
  image = np.zeros((28, 28, 1), np.uint8)
  heat = np.zeros((7, 7), np.float32)
  heat[0, 6] = 1.0  # top-right cell
  overlay = visualize_model.overlay_heatmap(image, heat, alpha=1.0,
                                            cmap="gray")
  assert overlay.shape == (28, 28, 3)
  assert 0.0 <= overlay.min() and overlay.max() <= 1.0
  # Bilinear upsampling keeps the peak in the top-right corner.
  assert overlay[1, 26].mean() > 0.5 and overlay[26, 1].mean() < 0.05
  rgb = np.random.default_rng(0).integers(0, 255, (224, 224, 3)).astype(
      np.uint8)
  _check_png(visualize_model.plot_heatmap_overlay(
      rgb, heat, tmp_path / "cam.png", title="class activation"), (1200, 450))
