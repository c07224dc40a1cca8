"""Runs that stop (SIGTERM, SIGKILL, NaN) and resume, on the tiny MNIST.

The reference is one uninterrupted run of K = 16 steps. A run stopped at
step 6 and resumed must end with bitwise the same params, opt_state, RNG and
metrics (CPU). `config.train.stop_after_steps` stops a run deterministically:
the process sends itself SIGTERM after that step, which takes the same path
as a SIGTERM from outside.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from cnn_jax import checkpoint
from cnn_jax import preemption
from cnn_jax import train
from cnn_jax import workdirs
from cnn_jax import writers
from configs import mnist as mnist_config
from tests.conftest import REPO
from tests.conftest import write_tiny_mnist

# 256 images in batches of 32: 8 steps per epoch, 16 in all. Log windows of
# 3 steps straddle the stop at step 6; every checkpoint is kept so mid-run
# states can be compared.
BASE = {"data.batch_size": 32, "data.eval_batch_size": 64,
        "train.num_epochs": 2, "train.log_every_steps": 3,
        "checkpoint.every_steps": 4, "checkpoint.keep": 10}
STEPS_PER_EPOCH = 8
FINAL_STEP = 16


def _config(data_dir, overrides=None):
  config = mnist_config.get_config()
  config.data.data_dir = str(data_dir)
  for key, value in {**BASE, **(overrides or {})}.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _launch(workdir, data_dir, overrides=None, *flags, env=None, popen=False):
  """launch.py with the same config as _config(data_dir, overrides)."""
  args = [sys.executable, os.path.join(REPO, "launch.py"),
          "--config", os.path.join(REPO, "configs", "mnist.py"),
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *flags]
  overrides = {**BASE, **(overrides or {})}
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  if popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def _arrays(workdir, step, config):
  """The checkpointed TrainState's arrays at `step`."""
  abstract = train.abstract_train_state(config, (28, 28, 1), STEPS_PER_EPOCH)
  manager = checkpoint.make_manager(workdir)
  state, _ = checkpoint.restore(manager, abstract, step)
  manager.close()
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "rng": state.rng}


def _metrics(workdir):
  """The run's metrics as it finally went, without timings."""
  return [{k: v for k, v in record.items() if k != "img_per_s"}
          for record in writers.drop_superseded(writers.read_metrics(workdir))
          if record["split"] != "resumed"]


def _assert_same_run(workdir, reference, config):
  chex.assert_trees_all_equal(_arrays(workdir, FINAL_STEP, config),
                              _arrays(reference, FINAL_STEP, config))
  assert _metrics(workdir) == _metrics(reference)
  summary = workdirs.read_summary(workdir)
  assert summary["status"] == "finished"
  assert summary["test_accuracy"] == workdirs.read_summary(
      reference)["test_accuracy"]


def _copy(workdir, tmp_path):
  return shutil.copytree(workdir, tmp_path / "run")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module", autouse=True)
def launch_env(tmp_path_factory):
  """The environment for launch.py subprocesses.

  All runs of this module, here and in subprocesses, compile the same
  programs: they share one persistent compilation cache, so only the first
  run pays for compiling (switched off again after the module).
  """
  options = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jit")),
             "jax_persistent_cache_min_compile_time_secs": 0,
             "jax_persistent_cache_min_entry_size_bytes": -1}
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield {**os.environ, **{name.upper(): str(value)
                          for name, value in options.items()}}
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  train.train_and_evaluate(_config(data_dir), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def preempted(data_dir, launch_env, tmp_path_factory):
  """(workdir, result) of launch.py stopped by SIGTERM after step 6."""
  workdir = tmp_path_factory.mktemp("preempted") / "run"
  result = _launch(workdir, data_dir, {"train.stop_after_steps": 6},
                   env=launch_env)
  return workdir, result


def test_sigterm_saves_exits_143_and_the_same_config_resumes_bitwise(
    preempted, uninterrupted, data_dir, tmp_path):
  stopped, result = preempted
  assert result.returncode == 143, result.stderr[-2000:]
  assert "stopped by SIGTERM after step 6" in result.stderr
  assert "rerun the same command to resume" in result.stderr
  assert "Traceback" not in result.stderr
  assert checkpoint.saved_steps(stopped) == [4, 6]
  summary = workdirs.read_summary(stopped)
  assert summary["status"] == "preempted" and summary["step"] == 6

  # The same config again (what rerunning the command does, in-process).
  workdir = _copy(stopped, tmp_path)
  train.train_and_evaluate(_config(data_dir, {"train.stop_after_steps": 6}),
                           str(workdir))
  _assert_same_run(workdir, uninterrupted, _config(data_dir))
  # metrics.jsonl was appended to: the first part is still there, then one
  # 'resumed' record.
  records = writers.read_metrics(workdir)
  assert records[:len(writers.read_metrics(stopped))] == writers.read_metrics(
      stopped)
  assert [r["step"] for r in records if r["split"] == "resumed"] == [6]


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise(
    uninterrupted, data_dir, launch_env, tmp_path):
  workdir = tmp_path / "run"
  process = _launch(workdir, data_dir, {"checkpoint.every_steps": 2},
                    env=launch_env, popen=True)
  deadline = time.time() + 300
  while not checkpoint.saved_steps(workdir) and time.time() < deadline:
    assert process.poll() is None, "launch.py ended before it was killed"
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  assert checkpoint.saved_steps(workdir)[-1] < FINAL_STEP

  train.train_and_evaluate(_config(data_dir, {"checkpoint.every_steps": 2}),
                           str(workdir))
  _assert_same_run(workdir, uninterrupted, _config(data_dir))


def test_damaged_latest_checkpoint_resumes_from_the_one_before(
    preempted, uninterrupted, data_dir, tmp_path, caplog):
  workdir = _copy(preempted[0], tmp_path)
  latest = os.path.join(checkpoint.checkpoint_dir(workdir), "6")
  with open(os.path.join(latest, "meta", "metadata"), "w") as f:
    f.write('{"step": ')  # a write cut short
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(data_dir), str(workdir))
  assert "checkpoint step 6" in caplog.text
  assert os.path.isdir(latest + ".damaged")  # set aside, not deleted
  _assert_same_run(workdir, uninterrupted, _config(data_dir))


def test_same_seed_is_bitwise_identical_and_another_seed_is_not(
    preempted, uninterrupted, data_dir, tmp_path):
  # Two fresh runs: in this process, and launch.py's in another.
  config = _config(data_dir)
  chex.assert_trees_all_equal(_arrays(preempted[0], 4, config),
                              _arrays(uninterrupted, 4, config))
  other = _config(data_dir, {"train.stop_after_steps": 4})
  other.seed = 1
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(other, str(tmp_path / "seed1"))
  ours = _arrays(uninterrupted, 4, config)["params"]
  theirs = _arrays(tmp_path / "seed1", 4, other)["params"]
  assert not any(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


def test_config_that_changes_the_run_is_refused_listing_the_keys(
    preempted, data_dir, tmp_path):
  workdir = _copy(preempted[0], tmp_path)
  before = os.path.getsize(os.path.join(workdir, "metrics.jsonl"))
  config = _config(data_dir, {
      "optim.learning_rate": 0.01, "model.dropout_rate": 0.5,
      "train.num_epochs": 1,  # may grow, not shrink
      "train.log_every_steps": 5, "checkpoint.every_steps": 2})  # harmless
  with pytest.raises(workdirs.ConfigMismatchError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  for key in ("optim.learning_rate: 0.003 -> 0.01",
              "model.dropout_rate: 0.0 -> 0.5", "train.num_epochs: 2 -> 1"):
    assert key in message
  assert "log_every_steps" not in message and "every_steps" not in message
  assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) == before


def test_finished_run_is_refused_unless_num_epochs_grows(
    uninterrupted, data_dir, tmp_path):
  workdir = _copy(uninterrupted, tmp_path)
  with pytest.raises(workdirs.WorkdirInUseError, match="already holds a run"):
    train.train_and_evaluate(_config(data_dir), str(workdir))
  longer = _config(data_dir, {"train.num_epochs": 3,
                              "train.log_every_steps": 5})
  summary = train.train_and_evaluate(longer, str(workdir))
  assert summary["steps"] == 24 and summary["resumed_from_step"] == 16
  kept = json.loads((workdir / "summary.step16.json").read_text())
  assert kept["status"] == "finished" and kept["steps"] == 16


def test_nan_stops_with_status_diverged_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  real_step = train.train_step

  def poisoned_step(state, batch, **kwargs):
    # From the 6th step on, the images are NaN.
    image = batch["image"].astype(np.float32)
    image = jax.numpy.where(state.step >= 5, np.nan, image)
    return real_step(state, {**batch, "image": image}, **kwargs)

  monkeypatch.setattr(train, "train_step", poisoned_step)
  config = _config(data_dir, {"train.num_epochs": 1, "train.log_every_steps": 4,
                              "checkpoint.every_steps": 2})
  workdir = tmp_path / "run"
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* step 6"):
    train.train_and_evaluate(config, str(workdir))
  summary = workdirs.read_summary(workdir)
  assert summary["status"] == "diverged" and summary["step"] == 6
  assert summary["last_checkpoint"] == 4
  assert checkpoint.saved_steps(workdir) == [2, 4]
  chex.assert_tree_all_finite(_arrays(workdir, 4, config))


def test_evaluate_mode_writes_eval_json_and_never_overwrites(
    uninterrupted, data_dir, launch_env, tmp_path):
  workdir = _copy(uninterrupted, tmp_path)
  result = _launch(workdir, data_dir, None, "--mode=evaluate", "--step=8",
                   env=launch_env)
  assert result.returncode == 0, result.stderr[-2000:]
  evaluation = json.loads((workdir / "eval.json").read_text())
  test_at_8 = [r for r in writers.read_metrics(workdir)
               if r["split"] == "test" and r["step"] == 8][0]
  assert evaluation["step"] == 8 and evaluation["test_examples"] == 100
  assert evaluation["test_accuracy"] == test_at_8["accuracy"]

  # eval.json exists: the latest checkpoint goes to eval_step16.json.
  results, path = train.evaluate_checkpoint(_config(data_dir), str(workdir))
  assert path.endswith("eval_step16.json") and results["step"] == 16
  assert results["test_accuracy"] == workdirs.read_summary(
      workdir)["test_accuracy"]
  with pytest.raises(workdirs.WorkdirInUseError, match="eval_step16.json"):
    train.evaluate_checkpoint(_config(data_dir), str(workdir))


def test_workdir_with_results_but_no_checkpoint_is_refused(data_dir,
                                                           tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 3, "split": "train"}\n')
  with pytest.raises(workdirs.WorkdirInUseError,
                     match="no complete checkpoint to resume from"):
    workdirs.prepare(str(tmp_path), _config(data_dir))
