"""config.train.steps_per_call: N steps per jitted call (cnn_jax/training/multistep.py).

A call of N scanned steps is not bitwise the same as N calls of one step on
CPU: XLA fuses the scanned step differently, so gradients differ in the last
bits, and Adam's division by sqrt(v) turns that into up to ~1e-6 on the few
weights whose gradient is a near-zero sum. Runs with N > 1 are therefore
compared with N = 1 by closeness (_assert_params_close); two runs with the
same N, one of them stopped and resumed, are compared bitwise.
"""

import functools

import chex
import jax
import numpy as np
import pytest

from cnn_jax.data import batching
from cnn_jax.runs import checkpoint
from cnn_jax.runs import writers
from cnn_jax.training import multistep
from cnn_jax.training import preemption
from cnn_jax.training import steps
from cnn_jax.training import train
from configs import mnist as mnist_config
from tests.conftest import write_tiny_mnist

# 256 train images in batches of 32: 8 steps per epoch, 16 in all. Log
# windows of 3 steps end inside calls of 4.
STEPS_PER_EPOCH = 8
FINAL_STEP = 16
# Scanned vs single steps (float32, CPU): losses and almost every weight agree
# to RTOL; every weight to ATOL_ANY (measured: at most 3.5e-6, 1 to 18 of
# ~820,000 weights outside RTOL).
RTOL, ATOL = 1e-6, 1e-7
ATOL_ANY = 1e-5
MOST = 0.9999


def _config(data_dir, **train_overrides):
  config = mnist_config.get_config()
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 32
  config.data.eval_batch_size = 64
  config.train.num_epochs = 2
  config.train.log_every_steps = 3
  config.checkpoint.every_steps = 4
  config.checkpoint.keep = 10
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _params(workdir, step, config):
  """The params of the checkpoint of `step` in `workdir`."""
  abstract = steps.abstract_train_state(config, (28, 28, 1), STEPS_PER_EPOCH)
  manager = checkpoint.make_manager(str(workdir))
  state, _ = checkpoint.restore(manager, abstract, step)
  manager.close()
  return state.params


def _metrics(workdir):
  """metrics.jsonl as the run finally went, without timings."""
  return [{k: v for k, v in record.items() if k != "img_per_s"}
          for record in writers.drop_superseded(writers.read_metrics(workdir))
          if record["split"] != "resumed"]


def _assert_params_close(ours, reference):
  """Every leaf within ATOL_ANY, and a MOST fraction of all weights within
  RTOL (see the module docstring for why not all)."""
  chex.assert_trees_all_close(ours, reference, rtol=RTOL, atol=ATOL_ANY)
  pairs = list(zip(jax.tree.leaves(ours), jax.tree.leaves(reference)))
  close = sum(int(np.isclose(a, b, rtol=RTOL, atol=ATOL).sum())
              for a, b in pairs)
  assert close >= MOST * sum(a.size for a, _ in pairs), close


def _assert_same_metrics(ours, reference):
  """Same records at the same steps; values equal up to float rounding."""
  assert ([(r["split"], r["step"]) for r in ours]
          == [(r["split"], r["step"]) for r in reference])
  for mine, theirs in zip(ours, reference):
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
      if isinstance(value, float):
        assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
      else:
        assert mine[key] == value, key


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def one_step_run(data_dir, tmp_path_factory):
  """A run with steps_per_call = 1: the reference."""
  workdir = tmp_path_factory.mktemp("n1") / "run"
  train.train_and_evaluate(_config(data_dir), str(workdir))
  return workdir


@pytest.mark.parametrize("unroll", [1, True])
def test_multi_step_equals_single_steps(unroll):
  config = mnist_config.get_config()
  config.model.use_batchnorm = True
  config.model.dropout_rate = 0.25
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      (28, 28, 1), steps_per_epoch=10)
  step_fn = functools.partial(steps.train_step, mean=0.13, std=0.3,
                              augment_config={"crop_padding": 2})
  rng = np.random.default_rng(0)
  batches = {
      "image": rng.integers(0, 255, (4, 16, 28, 28, 1)).astype(np.uint8),
      "label": rng.integers(0, 10, (4, 16)).astype(np.int32)}

  single = jax.jit(step_fn)
  expected, losses = state, []
  for i in range(4):
    expected, metrics = single(expected, jax.tree.map(lambda x, i=i: x[i],
                                                      batches))
    losses.append(metrics["loss"])
  multi = jax.jit(multistep.make_multi_step(step_fn, unroll),
                  donate_argnums=0)
  state, metrics = multi(state, batches)

  assert int(state.step) == 4
  chex.assert_shape(metrics["loss"], (4,))
  np.testing.assert_allclose(metrics["loss"], losses, rtol=RTOL)
  _assert_params_close(state.params, expected.params)
  _assert_params_close(state.batch_stats, expected.batch_stats)


def test_group_batches_ends_groups_at_every_nth_batch_and_epoch_end():
  images = np.arange(10 * 2, dtype=np.uint8).reshape(10, 2)

  class Toy:
    def __init__(self):
      self.images, self.labels = images, np.arange(10)

    def __len__(self):
      return 10

  # 10 examples in batches of 2: 5 steps per epoch, groups of 2, 2, 1.
  batches = batching.train_batches(Toy(), 2, seed=0)
  groups = multistep.group_batches(batches, 2)
  got = [next(groups) for _ in range(6)]
  assert [len(batch["label"]) for _, batch in got] == [2, 2, 1, 2, 2, 1]
  assert [(p.epoch, p.batch) for p, _ in got] == [
      (0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
  chex.assert_shape(got[0][1]["image"], (2, 2, 2))
  # Started mid-group (e.g. from another run's checkpoint): realigned.
  batches = batching.train_batches(Toy(), 2, seed=0,
                                   start=batching.IteratorPosition(0, 1))
  got = [next(multistep.group_batches(batches, 2))]
  assert len(got[0][1]["label"]) == 1 and got[0][0].batch == 2


def test_four_steps_per_call_train_like_one(one_step_run, data_dir,
                                            tmp_path):
  config = _config(data_dir, steps_per_call=4)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == FINAL_STEP
  _assert_params_close(_params(tmp_path / "run", FINAL_STEP, config),
                       _params(one_step_run, FINAL_STEP, config))
  _assert_same_metrics(_metrics(tmp_path / "run"), _metrics(one_step_run))
  assert checkpoint.saved_steps(tmp_path / "run") == [4, 8, 12, 16]


def test_calls_end_at_epoch_boundaries(one_step_run, data_dir, tmp_path):
  # 8 steps per epoch in calls of 3: 3, 3, 2 per epoch, never 3 across one.
  config = _config(data_dir, steps_per_call=3)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  records = _metrics(tmp_path / "run")
  _assert_same_metrics(records, _metrics(one_step_run))
  assert [r["step"] for r in records if r["split"] == "test"] == [8, 16]
  _assert_params_close(_params(tmp_path / "run", FINAL_STEP, config),
                       _params(one_step_run, FINAL_STEP, config))
  # checkpoint.every_steps = 4 falls inside calls: saved at the first call
  # end at or after each multiple (calls end at 3, 6, 8, 11, 14, 16).
  assert checkpoint.saved_steps(tmp_path / "run") == [6, 8, 14, 16]


@pytest.mark.parametrize("value", [0, -2])
def test_bad_steps_per_call_is_refused_naming_the_key(value, tmp_path):
  config = _config(tmp_path, steps_per_call=value)
  with pytest.raises(ValueError, match=r"config\.train\.steps_per_call="):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before any I/O


@pytest.mark.parametrize("value", [2.5, "4", True, None])
def test_steps_per_call_must_be_an_int(value):
  # ConfigDict already refuses a change of type; a plain dict does not.
  with pytest.raises(ValueError, match=r"config\.train\.steps_per_call="):
    multistep.steps_per_call({"steps_per_call": value})
  assert multistep.steps_per_call({}) == 1  # configs without the key


def test_stopped_and_resumed_equals_uninterrupted_with_four_per_call(
    data_dir, tmp_path):
  config = _config(data_dir, steps_per_call=4)
  train.train_and_evaluate(config, str(tmp_path / "whole"))
  # Step 6 falls inside the call of steps 5-8: it stops after step 8.
  stopped = _config(data_dir, steps_per_call=4, stop_after_steps=6)
  with pytest.raises(preemption.Preempted) as error:
    train.train_and_evaluate(stopped, str(tmp_path / "run"))
  assert error.value.step == 8
  assert checkpoint.saved_steps(tmp_path / "run") == [4, 8]

  train.train_and_evaluate(stopped, str(tmp_path / "run"))
  chex.assert_trees_all_equal(_params(tmp_path / "run", FINAL_STEP, config),
                              _params(tmp_path / "whole", FINAL_STEP, config))
  assert _metrics(tmp_path / "run") == _metrics(tmp_path / "whole")


def test_checkpoint_from_before_steps_per_call_still_resumes():
  """A saved config without train.steps_per_call is the one-step loop: it
  matches a config with 1 and differs from one with 4."""
  from cnn_jax.runs import workdirs  # pylint: disable=g-import-not-at-top
  saved = {"train": {"num_epochs": 2}}
  assert workdirs.config_differences(
      saved, {"train": {"num_epochs": 2, "steps_per_call": 1}}) == []
  assert workdirs.config_differences(
      saved, {"train": {"num_epochs": 2, "steps_per_call": 4}}) == [
          "train.steps_per_call: 1 -> 4"]
