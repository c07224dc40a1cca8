"""Reproducible runs and their checkpoints, on the tiny MNIST run of
tests/tiny_run.py: the same seed gives bitwise the same run, in this process
or launch.py's, and --mode=evaluate reads a checkpoint back.

Runs that stop (SIGTERM, SIGINT, SIGKILL, NaN), resume, or are refused:
tests/test_faults.py.
"""

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.training import preemption
from cnn_jax.training import train
from tests import tiny_run

pytestmark = pytest.mark.usefixtures("launch_env")


@pytest.fixture(scope="module")
def launched(tiny_run_data, launch_env, tmp_path_factory):
  """The workdir of the tiny run trained by launch.py, never stopped."""
  workdir = tmp_path_factory.mktemp("launched") / "run"
  result = tiny_run.launch(workdir, tiny_run_data, env=launch_env)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def test_same_seed_is_bitwise_identical_and_another_seed_is_not(
    launched, uninterrupted, tiny_run_data, tmp_path):
  # Two fresh runs: in this process, and launch.py's in another.
  config = tiny_run.config(tiny_run_data)
  for step in (4, 8, 12, tiny_run.FINAL_STEP):
    chex.assert_trees_all_equal(tiny_run.arrays(launched, step, config),
                                tiny_run.arrays(uninterrupted, step, config))
  assert tiny_run.metrics(launched) == tiny_run.metrics(uninterrupted)
  other = tiny_run.config(tiny_run_data, {"train.stop_after_steps": 4})
  other.seed = 1
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(other, str(tmp_path / "seed1"))
  ours = tiny_run.arrays(uninterrupted, 4, config)["params"]
  theirs = tiny_run.arrays(tmp_path / "seed1", 4, other)["params"]
  assert not any(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


def test_evaluate_mode_writes_eval_json_and_never_overwrites(
    launched, tiny_run_data, launch_env, tmp_path):
  workdir = shutil.copytree(launched, tmp_path / "run")
  result = tiny_run.launch(workdir, tiny_run_data, None, "--mode=evaluate",
                           "--step=8", env=launch_env)
  assert result.returncode == 0, result.stderr[-2000:]
  evaluation = json.loads((workdir / "eval.json").read_text())
  test_at_8 = [r for r in writers.read_metrics(workdir)
               if r["split"] == "test" and r["step"] == 8][0]
  assert evaluation["step"] == 8 and evaluation["test_examples"] == 100
  assert evaluation["test_accuracy"] == test_at_8["accuracy"]

  # eval.json exists: the latest checkpoint goes to eval_step16.json.
  config = tiny_run.config(tiny_run_data)
  results, path = train.evaluate_checkpoint(config, str(workdir))
  assert path.endswith("eval_step16.json") and results["step"] == 16
  assert results["test_accuracy"] == workdirs.read_summary(
      workdir)["test_accuracy"]
  with pytest.raises(workdirs.WorkdirInUseError, match="eval_step16.json"):
    train.evaluate_checkpoint(config, str(workdir))
