"""Detection: target encoding/decoding, COCO mAP, the digit canvases with
boxes, the CenterNet on configs/detect_digits.py."""

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import canvas
from cnn_jax.data import digit_boxes
from cnn_jax.data import load_splits
from cnn_jax.tasks import detection
from cnn_jax.tasks import get_task
from cnn_jax.training import steps
from configs import detect_digits
from tests.conftest import REPO

K = 10


def _canvas_labels(num=6, size=64, max_digits=4, seed=0):
  rng = np.random.default_rng(seed)
  # Blocky stand-in digits of varied ink boxes (no MNIST needed here).
  digits = np.zeros((20, 28, 28), np.uint8)
  for i in range(20):
    h, w = rng.integers(4, 20, 2)
    digits[i, 2:2 + h, 3:3 + w] = 255
  made = canvas.make_canvases(digits, np.arange(20) % K, num, size, 1,
                              max_digits, seed=seed)
  return made, digit_boxes.box_labels(made, size)


def _perfect_outputs(labels, grid):
  """Outputs whose heat maps are the encoded targets (as logits) and whose
  box channels hold the targets at the peak cells."""

  def one(label):
    heat, cells, box_targets, valid = detection.encode_targets(
        label, (grid, grid), K)
    logits = jax.scipy.special.logit(jnp.clip(heat, 1e-4, 1 - 1e-4))
    box = jnp.zeros((grid, grid, 4))
    # Invalid rows write to cell (0, 0) first, the valid ones after them.
    order = jnp.argsort(valid)
    box = box.at[cells[order, 0], cells[order, 1]].set(box_targets[order])
    return jnp.concatenate([logits, box], -1)

  return jax.jit(jax.vmap(one))(jnp.asarray(labels))


def test_decoding_ground_truth_heat_maps_recovers_the_boxes_exactly():
  made, labels = _canvas_labels()
  outputs = _perfect_outputs(labels, 16)
  boxes, scores, classes = jax.jit(detection.decode)(outputs)
  chex.assert_shape(boxes, (6, 20, 4))
  for i in range(6):
    confident = np.asarray(scores[i]) > 0.5
    n = int(made["num_digits"][i])
    assert confident.sum() == n
    found = sorted(zip(np.asarray(classes[i])[confident].tolist(),
                       np.asarray(boxes[i])[confident].round(5).tolist()))
    expected = sorted(zip(made["classes"][i, :n].tolist(),
                          (made["boxes"][i, :n] / 64).round(5).tolist()))
    assert [c for c, _ in found] == [c for c, _ in expected]
    np.testing.assert_allclose([b for _, b in found],
                               [b for _, b in expected], atol=1e-5)


def test_encoded_heat_map_peaks_at_one_per_object():
  _, labels = _canvas_labels(num=3)
  encode = jax.jit(functools.partial(detection.encode_targets,
                                     grid_shape=(16, 16), num_classes=K))
  for label in labels:
    heat, cells, _, valid = encode(jnp.asarray(label))
    assert float(heat.max()) == 1.0
    assert int((heat == 1.0).sum()) == int(valid.sum())
    for (r, c), cls, ok in zip(np.asarray(cells), label[:, 0], valid):
      if ok:
        assert float(heat[r, c, int(cls)]) == 1.0


def test_map_of_perfect_predictions_is_one():
  _, labels = _canvas_labels(num=8)
  d = labels.shape[1]
  scores = np.where(labels[..., 0] >= 0, 0.9, 0.0)
  result = detection.coco_map(labels[..., 1:], scores,
                              np.maximum(labels[..., 0], 0).astype(int),
                              labels, image_size=64)
  assert result["map50"] == pytest.approx(1.0)
  assert result["map"] == pytest.approx(1.0)
  # Boxes shifted by half their height: IoU 1/3 < 0.5, AP 0.
  shifted = labels[..., 1:].copy()
  height = shifted[..., 2] - shifted[..., 0]
  shifted[..., 0] += height / 2
  shifted[..., 2] += height / 2
  assert detection.coco_map(shifted, scores, np.maximum(
      labels[..., 0], 0).astype(int), labels, 64)["map50"] == 0.0
  # No detections at all.
  assert detection.coco_map(labels[..., 1:], np.zeros((8, d)),
                            np.zeros((8, d), int), labels)["map"] == 0.0


def test_task_metrics_of_perfect_outputs():
  _, labels = _canvas_labels(num=5)
  outputs = _perfect_outputs(labels, 16)
  batch = {"image": jnp.zeros((5, 64, 64, 1)), "label": jnp.asarray(labels),
           "mask": jnp.array([True] * 4 + [False])}
  task = get_task("detection")
  sums, examples = jax.jit(lambda o, b: (task.eval_sums(o, b),
                                         task.eval_examples(o, b)))(
                                             outputs, batch)
  examples = jax.tree.map(lambda x: np.asarray(x)[:4], examples)
  result = task.finalize(jax.device_get(sums), examples)
  assert result["count"] == 4
  assert result["accuracy"] == 1.0
  assert result["map50"] == pytest.approx(1.0)
  assert result["map"] == pytest.approx(1.0)
  # The loss is far lower for the perfect outputs than for blank ones.
  loss = jax.jit(task.loss)
  perfect_loss = loss(outputs, batch)
  chex.assert_shape(perfect_loss, (5,))
  blank_loss = loss(jnp.zeros_like(outputs), batch)
  assert float(perfect_loss.max()) < 0.1 * float(blank_loss.min())


def test_digit_box_labels_are_normalised_and_padded():
  made, labels = _canvas_labels(num=4)
  chex.assert_shape(labels, (4, 4, 5))
  assert labels.dtype == np.float32
  for i in range(4):
    n = made["num_digits"][i]
    np.testing.assert_array_equal(labels[i, :n, 0], made["classes"][i, :n])
    np.testing.assert_allclose(labels[i, :n, 1:] * 64, made["boxes"][i, :n])
    assert (labels[i, n:, 0] == -1).all() and not labels[i, n:, 1:].any()


def test_detection_source_is_deterministic_and_uses_mnist():
  config = detect_digits.get_config()
  config.data.num_train, config.data.num_test = 40, 10
  first, second = load_splits(config.data), load_splits(config.data)
  np.testing.assert_array_equal(first["train"].images, second["train"].images)
  np.testing.assert_array_equal(first["test"].labels, second["test"].labels)
  assert first["train"].images.shape == (40, 64, 64, 1)
  assert first["test"].labels.shape == (10, 4, 5)
  assert not np.array_equal(first["train"].images[:10], first["test"].images)


def test_wrong_labels_and_unknown_option_are_named():
  config = detect_digits.get_config()
  train_set = type("Split", (), {"labels": np.zeros((3, 5)),
                                 "name": "x/train"})()
  with pytest.raises(ValueError, match=r"needs labels \[N, M, 5\]"):
    detection._for_run(config, train_set)
  config.detection.nms_threshold = 0.3
  train_set.labels = np.zeros((3, 4, 5))
  with pytest.raises(ValueError, match="config.detection.nms_threshold is "
                     "not an option"):
    detection._for_run(config, train_set)


def test_centernet_shapes_on_config():
  config = detect_digits.get_config()
  model = steps.create_model(config.model)
  x = jnp.zeros((2, 64, 64, 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(functools.partial(model.apply,
                                                     train=False),
                                   variables, x), (2, 16, 16, K + 4))


@pytest.mark.slow  # compiling the CenterNet's training step: ~30 s of CPU
def test_detect_digits_config_runs_one_train_step():
  config = detect_digits.get_config()
  _, labels = _canvas_labels(num=4)
  state, _ = steps.create_train_state(config, jax.random.key(0),
                                      (64, 64, 1), 10)
  batch = {"image": np.full((4, 64, 64, 1), 10, np.uint8), "label": labels}
  step = jax.jit(functools.partial(steps.train_step, mean=0.1, std=0.3,
                                   task=get_task("detection")))
  state, metrics = step(state, batch)
  chex.assert_tree_all_finite(metrics)
  assert int(state.step) == 1


@pytest.mark.slow  # a tiny detector trained through launch.py, then drawn
def test_launch_then_prediction_png(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--config",
       os.path.join(REPO, "configs", "detect_digits.py"),
       f"--workdir={workdir}", "--config.data.num_train=64",
       "--config.data.num_test=20", "--config.data.eval_batch_size=16",
       "--config.train.num_epochs=1", "--config.model.fpn_features=8",
       "--config.model.head_features=8",
       "--config.model.stage_features=(8, 8, 8, 8)"],
      capture_output=True, text=True, cwd=REPO, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["task"] == "detection"
  assert {"map50", "map", "accuracy"} <= set(summary["test_metrics"])
  drawn = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "box_predictions.py"),
       f"--workdir={workdir}", "--num=4"],
      capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
  assert drawn.returncode == 0, drawn.stderr[-2000:]
  assert (workdir / "predictions.png").stat().st_size > 1000
