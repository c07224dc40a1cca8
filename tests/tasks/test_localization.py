"""Localization: output split, loss, metrics, data source and config."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import load_splits
from cnn_jax.tasks import get_task
from cnn_jax.tasks import localization
from cnn_jax.training import steps
from configs import localize_digits


def _raw_box(box):
  """The 4 raw outputs that split_outputs maps to `box` (y0, x0, y1, x1)."""
  box = np.asarray(box, np.float64)
  centre_size = np.concatenate([(box[..., :2] + box[..., 2:]) / 2,
                                box[..., 2:] - box[..., :2]], -1)
  return np.log(centre_size / (1 - centre_size)).astype(np.float32)


def test_split_outputs_maps_to_valid_boxes():
  outputs = jnp.zeros((1, 14)).at[0, 3].set(5.0)
  logits, box = localization.split_outputs(outputs)
  chex.assert_shape(logits, (1, 10))
  # sigmoid(0) = 0.5: centre (0.5, 0.5), size 0.5 x 0.5.
  np.testing.assert_allclose(box, [[0.25, 0.25, 0.75, 0.75]])
  # Any raw output gives y1 >= y0 and x1 >= x0.
  raw = jax.random.normal(jax.random.key(0), (50, 14)) * 5
  _, boxes = localization.split_outputs(raw)
  assert bool(jnp.all(boxes[:, 2:] >= boxes[:, :2]))
  target = np.array([[0.1, 0.2, 0.4, 0.3]])
  _, recovered = localization.split_outputs(
      jnp.concatenate([jnp.zeros((1, 10)), _raw_box(target)], -1))
  np.testing.assert_allclose(recovered, target, atol=1e-6)


def _batch():
  labels = np.array([[3, 0.1, 0.2, 0.4, 0.3],
                     [7, 0.5, 0.5, 0.9, 0.7],
                     [0, 0.2, 0.2, 0.6, 0.6]], np.float32)
  return {"label": jnp.asarray(labels), "mask": jnp.array([True, True, False]),
          "image": jnp.zeros((3, 64, 64, 1))}


def test_perfect_outputs_score_full_marks_and_lowest_loss():
  batch = _batch()
  labels = np.asarray(batch["label"])
  class_logits = 10 * jax.nn.one_hot(labels[:, 0].astype(int), 10)
  perfect = jnp.concatenate([class_logits, _raw_box(labels[:, 1:])], -1)
  task = get_task("localization")
  sums = jax.jit(task.eval_sums)(perfect, batch)
  result = task.finalize(jax.device_get(sums))
  assert result["count"] == 2
  assert result["accuracy"] == 1.0
  assert result["mean_iou"] == pytest.approx(1.0, abs=1e-5)
  assert result["iou50"] == 1.0 and result["correct50"] == 1.0
  loss = jax.jit(task.loss)
  shifted = perfect.at[:, -4:-2].add(0.5)  # centres moved
  assert float(loss(perfect, batch).max()) < 0.01
  assert float(loss(shifted, batch).min()) > 0.1
  grads = jax.jit(jax.grad(lambda o: jnp.mean(task.loss(o, batch))))(shifted)
  chex.assert_tree_all_finite(grads)


def test_metrics_count_only_unmasked_examples():
  batch = _batch()
  # Every box predicted as (0.25, 0.25, 0.75, 0.75), every class as 0.
  outputs = jnp.zeros((3, 14)).at[:, 0].set(1.0)
  task = get_task("localization")
  result = task.finalize(jax.device_get(jax.jit(task.eval_sums)(outputs,
                                                                batch)))
  # IoU with box 1 (0.1,0.2,0.4,0.3): inter 0.15*0.05, union 0.25 + 0.03 -
  # 0.0075; with box 2 (0.5,0.5,0.9,0.7): inter 0.25*0.2, union 0.25 +
  # 0.08 - 0.05.
  expected = [0.0075 / 0.2725, 0.05 / 0.28]
  assert result["mean_iou"] == pytest.approx(np.mean(expected), rel=1e-5)
  assert result["accuracy"] == 0.0 and result["iou50"] == 0.0


def test_localization_source_one_digit_per_canvas():
  config = localize_digits.get_config()
  config.data.num_train, config.data.num_test = 30, 10
  splits = load_splits(config.data)
  train_set = splits["train"]
  assert train_set.images.shape == (30, 64, 64, 1)
  chex.assert_shape(train_set.labels, (30, 5))
  labels = train_set.labels
  assert set(np.unique(labels[:, 0])) <= set(range(10))
  assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all()
  # The box is the ink: nothing outside, ink on each of its edges.
  for image, (_, y0, x0, y1, x1) in zip(train_set.images, labels):
    y0, x0, y1, x1 = (np.array([y0, x0, y1, x1]) * 64).round().astype(int)
    ink = image[..., 0] > 0
    assert ink[y0:y1, x0:x1].sum() == ink.sum()
    assert ink[y0].any() and ink[y1 - 1].any()
    assert ink[:, x0].any() and ink[:, x1 - 1].any()
  np.testing.assert_array_equal(load_splits(config.data)["test"].labels,
                                splits["test"].labels)
  config.data.max_digits = 2
  with pytest.raises(ValueError, match="one digit per canvas"):
    load_splits(config.data)


def test_for_run_checks_labels_and_num_classes():
  config = localize_digits.get_config()
  train_set = type("Split", (), {"labels": np.zeros((4, 5), np.float32),
                                 "name": "x/train"})()
  train_set.labels[:, 0] = 9
  assert localization._for_run(config, train_set).name == "localization"
  config.model.num_classes = 10
  with pytest.raises(ValueError, match=r"num_classes must be K \+ 4 = 14"):
    localization._for_run(config, train_set)
  train_set.labels = np.zeros((4,), np.int32)
  with pytest.raises(ValueError, match=r"needs labels \[N, 5\]"):
    localization._for_run(config, train_set)


def test_config_shapes():
  config = localize_digits.get_config()
  model = steps.create_model(config.model)
  x = jnp.zeros((2, 64, 64, 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(functools.partial(model.apply,
                                                     train=False),
                                   variables, x), (2, 14))


@pytest.mark.slow  # compiling the training step: ~10-25 s of CPU
def test_config_runs_one_train_step():
  config = localize_digits.get_config()
  state, _ = steps.create_train_state(config, jax.random.key(0),
                                      (64, 64, 1), 10)
  batch = {"image": np.full((3, 64, 64, 1), 20, np.uint8),
           "label": np.asarray(_batch()["label"])}
  step = jax.jit(functools.partial(
      steps.train_step, mean=0.1, std=0.3, task=get_task("localization"),
      augment_config=config.data.augment.to_dict()))
  state, metrics = step(state, batch)
  chex.assert_tree_all_finite(metrics)
  assert set(metrics) == {"loss", "accuracy", "mean_iou"}
