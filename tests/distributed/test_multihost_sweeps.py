"""Sweeps and searches over several processes (jax.distributed on localhost,
a free port each): launch.py with a 2-member sweep and a 2-slot PBT search
(slow: successive halving) in 2 processes x 1 device, one member per process
(config.sweep.member_devices=2), trains the same per-member parameters and
makes the same decisions (ranking, PBT's copies, best trial) as the same
config run in this process on one device; process 1 writes nothing. A
configuration that does not split over the processes' devices is one line.
Every child is waited for with a timeout and killed by its pid.
"""

import json
import os
import subprocess
import sys

import chex
import pytest

from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.sweeps import search
from cnn_jax.sweeps import sweep
from configs import mnist_search
from configs import mnist_sweep
from tests.conftest import REPO
from tests import tiny_run
from tests.distributed import launched
from tests.distributed import test_multihost
from tests.sweeps import test_search

_free_port = launched.free_port
_wait = launched.wait

pytestmark = pytest.mark.usefixtures("launch_env")

# The tiny data (tests/conftest.py: 256 train, 100 test images): batches of
# 32, 8 steps; two members differing in seed. SGD with momentum (here and
# in SEARCH): its updates follow the gradients' float noise linearly
# (Adam's, divided by sqrt(v), turn it into ~1e-4 where a gradient is near
# zero).
SWEEP = {"optim.name": "momentum", "optim.schedule": "constant",
         "data.batch_size": 32, "data.eval_batch_size": 50,
         "train.num_epochs": 1, "train.log_every_steps": 4,
         "sweep.axes.optim.learning_rate": (0.01,),
         "sweep.axes.seed": (0, 1)}
# PBT over 2 slots, selecting on 26 held-out images (7 steps per epoch):
# at steps 3 and 6 the worse slot (by validation loss: no ties) copies the
# better one's state across the processes and perturbs it.
SEARCH = {"optim.name": "momentum", "optim.schedule": "constant",
          "data.batch_size": 32, "data.eval_batch_size": 26,
          "train.num_epochs": 1, "train.log_every_steps": 4,
          "sweep.search": "pbt", "sweep.slots": 2,
          "sweep.pbt.every_steps": 3, "sweep.pbt.quantile": 0.5,
          "sweep.metric": "loss"}
# Vmapped members (several per device) sum in another order than members
# unrolled one after another (one device, one process); members given
# another member's batch rows would differ by ~1e-2.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _config(module, data_dir, overrides):
  config = module.get_config()
  config.data.data_dir = str(data_dir)
  config.update_from_flattened_dict(overrides)
  return config


def _start(config_file, workdir, data_dir, overrides, processes, devices,
           env, hooks=None):
  """launch.py with `config_file` and `overrides` in `processes` processes
  of `devices` CPU devices each (jax.distributed on a free port); hooks:
  {process: Python code run before launch.py's main}, as tiny_run.launch."""
  env = dict(env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             PYTHONPATH=REPO)
  flags = [f"--config={os.path.join(REPO, 'configs', config_file)}",
           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
  flags += [f"--config.{key}={value!r}" if isinstance(value, tuple)
            else f"--config.{key}={value}" for key, value in overrides.items()]
  port = _free_port()
  command = lambda index: (
      [sys.executable, "-c", hooks[index] + tiny_run._RUN_LAUNCH]  # pylint: disable=protected-access
      if index in (hooks or {}) else
      [sys.executable, os.path.join(REPO, "launch.py")])
  return [subprocess.Popen(
      [*command(index), *flags, f"--coordinator_address=localhost:{port}",
       f"--num_processes={processes}", f"--process_id={index}",
       "--distributed_timeout=60"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for index in range(processes)]


def _run(*args):
  results = _wait(_start(*args))
  for code, _, stderr in results:
    assert code == 0, stderr[-3000:]
  return results


def _quiet_other_process(results):
  """Process 1 printed its start and end line only (and wrote no file:
  every file is checked against the one-process run's)."""
  _, stdout, _ = results[1]
  lines = launched.own_lines(stdout)
  assert len(lines) == 2 and lines[0].startswith("process 1 of 2"), lines
  assert lines[1] == "process 1: done (exit status 0)", lines


def _same_files(one, many):
  """The multi-process run wrote the files the one-process run wrote."""
  listing = lambda root: sorted(
      os.path.relpath(os.path.join(folder, name), root)
      for folder, _, names in os.walk(root) for name in names
      if "checkpoints" not in folder and "tensorboard" not in folder)
  assert listing(many) == listing(one)


def _variables(workdir):
  return checkpoint.restore_variables(str(workdir))


@pytest.mark.parametrize("devices,member_devices", [
    pytest.param(1, 2, id="2x1-member-per-process"),
    pytest.param(2, 2, id="2x2-member-per-process", marks=pytest.mark.slow),
    pytest.param(1, 1, id="2x1-batch-over-processes",
                 marks=pytest.mark.slow),
])
def test_two_process_sweep_equals_one_process(tiny_run_data, launch_env,
                                              tmp_path, devices,
                                              member_devices):
  one = tmp_path / "one"
  expected = sweep.train_and_evaluate(_config(mnist_sweep, tiny_run_data,
                                              SWEEP), str(one))
  many = tmp_path / "many"
  results = _run("mnist_sweep.py", many, tiny_run_data,
                 {**SWEEP, "sweep.member_devices": member_devices}, 2,
                 devices, launch_env)
  _quiet_other_process(results)
  got = workdirs.read_summary(many)
  assert (got["processes"], got["devices"]) == (2, 2 * devices)
  assert got["mesh"] == {"members": member_devices,
                         "data": 2 * devices // member_devices}
  assert [r["member"] for r in got["ranking"]] == [
      r["member"] for r in expected["ranking"]]
  for row, want in zip(got["ranking"], expected["ranking"]):
    assert row["test_accuracy"] == want["test_accuracy"]
    assert row["test_loss"] == pytest.approx(want["test_loss"], rel=1e-4)
  for k in range(2):
    chex.assert_trees_all_close(_variables(many / "members" / str(k)),
                                _variables(one / "members" / str(k)),
                                **TOLERANCE)
  _same_files(one, many)
  with open(many / "metrics.jsonl", encoding="utf-8") as f:
    assert {json.loads(line)["member"] for line in f} == {0, 1}


# Successive halving over 4 trials in 2 slots, 2 epochs: the stopped trials'
# slots are refilled (fresh states selected in place across the processes).
HALVING = {**SEARCH, "sweep.search": "halving", "sweep.trials": 4,
           "sweep.halving.rungs": (1,), "train.num_epochs": 2}


@pytest.mark.parametrize("overrides,devices", [
    pytest.param(SEARCH, 1, id="pbt-2x1"),
    pytest.param(SEARCH, 2, id="pbt-2x2", marks=pytest.mark.slow),
    pytest.param(HALVING, 1, id="halving-2x1", marks=pytest.mark.slow),
])
def test_two_process_search_equals_one_process(tiny_run_data, launch_env,
                                               tmp_path, overrides, devices):
  one, many = tmp_path / "one", tmp_path / "many"
  config = _config(mnist_search, tiny_run_data, overrides)
  expected = search.train_and_evaluate(config, str(one))
  results = _run("mnist_search.py", many, tiny_run_data,
                 {**overrides, "sweep.member_devices": 2}, 2, devices,
                 launch_env)
  _quiet_other_process(results)
  got = workdirs.read_summary(many)
  assert (got["processes"], got["devices"]) == (2, 2 * devices)
  strip = lambda rows: [{k: r[k] for k in ("trial", "parent", "values",
                                           "status", "start_step",
                                           "stop_step")} for r in rows]
  assert strip(got["ranking"]) == strip(expected["ranking"])
  if overrides["sweep.search"] == "pbt":  # PBT copied a state across
    assert any(r["parent"] is not None for r in got["ranking"])
  else:  # halving stopped trials at the rung and refilled their slots
    assert [r["status"] for r in got["ranking"]].count("stopped") == 2
  assert got["best_trial"] == expected["best_trial"]
  for row, want in zip(got["ranking"], expected["ranking"]):
    assert row["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)
  finished = [r["trial"] for r in got["ranking"] if r["status"] == "finished"]
  assert len(finished) == 2
  for trial in finished:  # kept: every final PBT member, the best 3 else
    chex.assert_trees_all_close(_variables(many / "kept" / str(trial)),
                                _variables(one / "kept" / str(trial)),
                                **TOLERANCE)
  chex.assert_trees_all_close(_variables(many / "best"),
                              _variables(one / "best"), **TOLERANCE)
  _same_files(one, many)


def test_members_that_do_not_split_over_the_processes_are_one_line(
    tiny_run_data, launch_env, tmp_path):
  overrides = {**SWEEP, "sweep.axes.seed": (0, 1, 2),
               "sweep.member_devices": 2}
  results = _wait(_start("mnist_sweep.py", tmp_path / "sweep", tiny_run_data,
                         overrides, 2, 1, launch_env))
  for code, _, stderr in results:
    lines = launched.own_lines(stderr)
    assert code == 1 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: 3 members per program "
                               "(config.sweep.chunk)"), lines
    assert "config.sweep.member_devices" in lines[0]
    assert "(2 processes x 1 device)" in lines[0]
  assert not os.path.exists(tmp_path / "sweep")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_the_search_and_relaunch_resumes(
    tiny_run_data, launch_env, tmp_path):
  overrides = {**SEARCH, "train.num_epochs": 3, "sweep.member_devices": 2}
  config = _config(mnist_search, tiny_run_data, overrides)
  config.sweep.member_devices = 1
  expected = search.train_and_evaluate(config, str(tmp_path / "one"))
  workdir = tmp_path / "stopped"
  # Process 1 gets SIGTERM during the agreement at the end of epoch 1 (its
  # flag there is already False): both stop after epoch 2's checkpoint.
  results = _wait(_start("mnist_search.py", workdir, tiny_run_data,
                         overrides, 2, 1, launch_env,
                         hooks={1: test_multihost._sigterm_after_calls(1)}))  # pylint: disable=protected-access
  assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
  for _, _, stderr in results:
    assert "stopped by SIGTERM after step 14" in stderr, stderr[-2000:]
  assert not os.path.exists(workdir / "summary.json")
  results = _run("mnist_search.py", workdir, tiny_run_data, overrides, 2, 1,
                 launch_env)
  assert "resuming the search at step 14" in results[0][1]
  got = workdirs.read_summary(workdir)
  test_search.assert_same_ranking(got, expected, rel=1e-4)


def test_search_with_batches_split_over_processes_stops_mid_epoch_and_resumes(
    tiny_run_data, launch_env, tmp_path):
  """sweep.member_devices=1 over 2 processes: every slot's batch is split
  over the processes and the slots run one member's program each
  (slot_steps.SlotSteps). train.stop_after_steps=10 (mid-epoch 2, after
  the rung and its refills) stops both processes at step 10, saved with the
  unread divergence flags; the relaunch without it ends as one process
  uninterrupted does."""
  config = _config(mnist_search, tiny_run_data, HALVING)
  expected = search.train_and_evaluate(config, str(tmp_path / "one"))
  workdir = tmp_path / "stopped"
  results = _wait(_start("mnist_search.py", workdir, tiny_run_data,
                         {**HALVING, "train.stop_after_steps": 10}, 2, 1,
                         launch_env))
  assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
  assert "10" in os.listdir(workdir / "checkpoints")
  assert not os.path.exists(workdir / "summary.json")
  results = _run("mnist_search.py", workdir, tiny_run_data, HALVING, 2, 1,
                 launch_env)
  assert "resuming the search at step 10" in results[0][1]
  got = workdirs.read_summary(workdir)
  assert (got["processes"], got["devices"]) == (2, 2)
  assert got["best_trial"] == expected["best_trial"]
  test_search.assert_same_ranking(got, expected, rel=1e-4)
