"""Training step, optimizers/schedules, and train_and_evaluate on tiny data."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.training import optim
from cnn_jax.training import steps
from cnn_jax.training import train
from configs import mnist as mnist_config


def _tiny_config(data_dir, **train_overrides):
  config = mnist_config.get_config()
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 32
  config.data.eval_batch_size = 64  # 100 test images: last batch padded
  config.train.num_epochs = 2
  config.train.log_every_steps = 3
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _batch(rng, n=16):
  images = rng.integers(0, 255, (n, 28, 28, 1)).astype(np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return {"image": images, "label": labels}


def test_train_steps_reduce_loss_on_a_fixed_batch():
  config = mnist_config.get_config()
  config.optim.schedule = "constant"
  config.optim.learning_rate = 1e-3
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      (28, 28, 1), steps_per_epoch=10)
  step = jax.jit(functools.partial(steps.train_step, mean=0.13, std=0.3))
  batch = _batch(np.random.default_rng(0))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 8
  assert losses[-1] < 0.5 * losses[0], losses
  chex.assert_tree_all_finite(state.params)


def test_train_step_is_deterministic_and_uses_dropout_keys():
  config = mnist_config.get_config()
  config.model.dropout_rate = 0.5
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(1),
                                      (28, 28, 1), steps_per_epoch=10)
  step = jax.jit(functools.partial(steps.train_step, mean=0.13, std=0.3,
                                   augment_config={"crop_padding": 2}))
  batch = _batch(np.random.default_rng(1))
  a, _ = step(state, batch)
  b, _ = step(state, batch)
  chex.assert_trees_all_equal(a.params, b.params)


def test_batchnorm_model_updates_batch_stats_in_training():
  config = mnist_config.get_config()
  config.model.use_batchnorm = True
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      (28, 28, 1), steps_per_epoch=10)
  new_state, _ = jax.jit(functools.partial(steps.train_step, mean=0.13,
                                           std=0.3))(state, _batch(
                                               np.random.default_rng(2)))
  before = jax.tree.leaves(state.batch_stats)
  after = jax.tree.leaves(new_state.batch_stats)
  assert before and not all(np.array_equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_takes_a_step(name):
  config = mnist_config.get_config()
  config.optim.name = name
  config.optim.learning_rate = 0.01
  config.optim.grad_clip_norm = 1.0
  tx = optim.make_optimizer(config.optim, 0.01)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  assert float(jnp.sum(updates["w"])) < 0


def test_schedules_shape():
  config = mnist_config.get_config()
  config.optim.learning_rate = 1.0
  config.optim.warmup_epochs = 1.0
  values = {}
  for name in optim.SCHEDULES:
    config.optim.schedule = name
    sched = optim.make_schedule(config.optim, total_steps=100,
                                steps_per_epoch=10)
    values[name] = [float(sched(s)) for s in (0, 10, 55, 100)]
  assert values["constant"] == [1.0] * 4
  assert values["cosine"][0] == 1.0 and values["cosine"][-1] == 0.0
  assert values["warmup_cosine"][0] == 0.0
  assert values["warmup_cosine"][1] == pytest.approx(1.0)
  assert values["one_cycle"][1] == pytest.approx(1.0)  # peak at 10%
  assert values["one_cycle"][-1] < 1e-3


def test_unknown_names_give_errors_naming_the_config_key():
  config = mnist_config.get_config()
  config.optim.name = "sgdd"
  with pytest.raises(ValueError, match="config.optim.name='sgdd'"):
    optim.make_optimizer(config.optim, 0.1)
  config = mnist_config.get_config()
  config.model.name = "resnet9000"
  with pytest.raises(ValueError, match="config.model.name='resnet9000'"):
    steps.create_model(config.model)


def test_train_and_evaluate_writes_all_outputs(tiny_mnist_dir, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(_tiny_config(tiny_mnist_dir), workdir)
  assert summary["steps"] == 2 * (256 // 32)
  assert summary["test_examples"] == 100  # every test image, none twice
  assert summary["test_accuracy"] > 0.5  # the toy classes are easy
  for name in ("summary.json", "metrics.jsonl", "learning_curves.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "16"))
  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk["config"]["data"]["batch_size"] == 32
  assert on_disk["test_accuracy"] == summary["test_accuracy"]
  # A second run into the same workdir is refused, and nothing is touched.
  mtime = os.path.getmtime(os.path.join(workdir, "summary.json"))
  with pytest.raises(train.workdirs.WorkdirInUseError, match="already holds"):
    train.train_and_evaluate(_tiny_config(tiny_mnist_dir), workdir)
  assert os.path.getmtime(os.path.join(workdir, "summary.json")) == mtime
