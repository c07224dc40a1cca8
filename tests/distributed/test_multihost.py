"""Runs on many devices and processes (cnn_jax/distributed): launch.py on the
tiny MNIST run (tests/tiny_run.py) with 1 process x 4 CPU devices and 2
processes x 2 devices on localhost (jax.distributed, a free port each)
trains the same parameters as one device on the same global batches;
2-process evaluation counts every test example once; SIGTERM to one process
stops both at the same step, SIGKILL of one makes the other exit (naming
process 1 when it was killed); relaunching resumes. Every child is waited
for with a timeout and killed by its pid (tests/distributed/launched.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from cnn_jax.data import batching
from cnn_jax.distributed import multihost
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from tests import tiny_run
from tests.distributed import launched
from tests.conftest import REPO
from tests.conftest import write_idx

pytestmark = pytest.mark.usefixtures("launch_env")

def _variables(workdir):
  return checkpoint.restore_variables(str(workdir))


def test_process_rows_cover_each_global_batch_once():
  dataset_size, batch = 37, 8
  images = np.arange(dataset_size)
  dataset = type("D", (), {"images": images, "labels": images,
                           "__len__": lambda self: dataset_size})()
  whole = list(batching.eval_batches(dataset, batch))
  parts = [list(batching.eval_batches(
      dataset, batch, multihost.process_rows(batch, p, 4))) for p in range(4)]
  for index, full in enumerate(whole):
    joined = np.concatenate([part[index]["image"] for part in parts])
    mask = np.concatenate([part[index]["mask"] for part in parts])
    np.testing.assert_array_equal(joined, full["image"])
    np.testing.assert_array_equal(mask, full["mask"])
  assert sum(b["mask"].sum() for part in parts for b in part) == dataset_size
  train = batching.train_batches(dataset, batch, seed=3)
  local = [batching.train_batches(dataset, batch, 3,
                                  rows=multihost.process_rows(batch, p, 2))
           for p in range(2)]
  for _ in range(6):  # across an epoch boundary (4 batches per epoch)
    (position, full), halves = next(train), [next(it) for it in local]
    assert all(h[0] == position for h in halves)
    np.testing.assert_array_equal(
        np.concatenate([h[1]["image"] for h in halves]), full["image"])


# (processes, devices, overrides, CNN_JAX_CONV_IMPL): the default suite runs
# the 2-process case with BatchNorm and 2 steps per call on the default
# convolutions (oneDNN on x86 CPUs); the others are slow.
_PARALLEL_CASES = [
    pytest.param(2, 2, {"model.use_batchnorm": True,
                        "train.steps_per_call": 2}, None, id="2x2-bn-call2"),
    pytest.param(1, 4, {}, None, id="1x4", marks=pytest.mark.slow),
    pytest.param(1, 4, {"model.use_batchnorm": True}, "xla",
                 id="1x4-bn-xla", marks=pytest.mark.slow),
    pytest.param(2, 2, {}, "xla", id="2x2-xla", marks=pytest.mark.slow),
    pytest.param(2, 2, {"model.use_batchnorm": True}, None, id="2x2-bn",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("processes,devices,overrides,conv_impl",
                         _PARALLEL_CASES)
def test_data_parallel_equals_one_device(processes, devices, overrides,
                                         conv_impl, tiny_run_data, launch_env,
                                         tmp_path):
  overrides = {"train.num_epochs": 1, **overrides}
  env = dict(launch_env)
  if conv_impl:
    env["CNN_JAX_CONV_IMPL"] = conv_impl
  launched.run(tmp_path / "one", tiny_run_data, overrides, 1, 1, env)
  results = launched.run(tmp_path / "many", tiny_run_data, overrides,
                         processes, devices, env)
  expected, got = _variables(tmp_path / "one"), _variables(tmp_path / "many")
  chex.assert_trees_all_close(got, expected, **launched.ACROSS_COUNTS)
  summary = workdirs.read_summary(tmp_path / "many")
  assert (summary["processes"], summary["devices"]) == (
      processes, processes * devices)
  assert summary["steps"] == tiny_run.STEPS_PER_EPOCH
  assert summary["test_examples"] == 100
  if processes > 1:  # process 1: one start and one end line, no files
    _, stdout, _ = results[1]
    # (Gloo, the CPU collectives library, prints its own connection lines,
    # "[Gloo] Rank 2 is connected to 3 peer ranks. ...", from C++: its
    # "[Gloo] Rank " part may land on another line than the rest.)
    lines = [line for line in stdout.strip().splitlines()
             if "[Gloo]" not in line and "peer ranks" not in line]
    assert len(lines) == 2 and lines[0].startswith("process 1 of 2"), lines
    assert lines[1] == "process 1: done (exit status 0)", lines


def _write_odd_mnist(folder, train=64, test=37):
  """A learnable tiny MNIST with an odd-sized test split."""
  rng = np.random.default_rng(1)
  for prefix, n in (("train", train), ("t10k", test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
      images[i, 2 + 6 * (k // 4):8 + 6 * (k // 4),
             2 + 6 * (k % 4):8 + 6 * (k % 4)] = 255
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return folder


def test_two_process_evaluation_counts_each_example_once(launch_env,
                                                         tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  _write_odd_mnist(data)
  # 2 steps of batch 32; evaluation in batches of 10 (rounded up to 12 for
  # 4 devices): 37 examples = 3 full batches and one of 1 + 11 padding.
  overrides = {"train.num_epochs": 1, "data.eval_batch_size": 10}
  workdir = tmp_path / "run"
  launched.run(workdir, data, overrides, 1, 1, launch_env)
  launched.run(workdir, data, overrides, 2, 2, launch_env, ["--mode=evaluate"])
  one = workdirs.read_summary(workdir)
  with open(workdir / "eval.json", encoding="utf-8") as f:
    two = json.load(f)
  assert one["test_examples"] == two["test_examples"] == 37
  # The same examples right: exact counts, so equal accuracies.
  assert two["test_accuracy"] == one["test_accuracy"]
  np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=1e-5)


def test_batch_size_that_does_not_split_is_one_line(tiny_run_data, launch_env,
                                                    tmp_path):
  (code, _, stderr), = launched.wait(launched.start(
      tmp_path / "run", tiny_run_data, {"data.batch_size": 30}, 1, 4,
      launch_env))
  lines = stderr.strip().splitlines()
  assert code == 1 and len(lines) == 1, stderr[-2000:]
  assert "config.data.batch_size=30" in lines[0] and "4 devices" in lines[0]
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def _sigterm_after_calls(calls):
  """A hook: this process sends itself SIGTERM during its `calls`-th
  agreement on stopping (its flag in that call is already False, so all
  processes stop after the next call: a stop only this process saw)."""
  return f"""
import os, signal
from cnn_jax.distributed import multihost
_any = multihost.any_process
_count = [0]
def _signal_then_agree(*flags):
  _count[0] += 1
  if _count[0] == {int(calls)}:
    os.kill(os.getpid(), signal.SIGTERM)
  return _any(*flags)
multihost.any_process = _signal_then_agree
"""


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step(tiny_run_data,
                                                      launch_env, tmp_path):
  reference = tmp_path / "uninterrupted"
  launched.run(reference, tiny_run_data, {}, 2, 1, launch_env)
  workdir = tmp_path / "stopped"
  results = launched.wait(launched.start(
      workdir, tiny_run_data, {}, 2, 1, launch_env,
      hooks={1: _sigterm_after_calls(5)}))
  assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
  # Both stopped after the call following the 5th: step 6, one checkpoint.
  for _, _, stderr in results:
    assert "stopped by SIGTERM after step 6" in stderr, stderr[-2000:]
  assert workdirs.read_summary(workdir)["step"] == 6
  assert 6 in checkpoint.saved_steps(str(workdir))
  launched.run(workdir, tiny_run_data, {}, 2, 1, launch_env)
  run_config = tiny_run.config(tiny_run_data)
  chex.assert_trees_all_equal(
      tiny_run.arrays(workdir, tiny_run.FINAL_STEP, run_config),
      tiny_run.arrays(reference, tiny_run.FINAL_STEP, run_config))
  assert workdirs.read_summary(workdir)["resumed_from_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_sigkill_of_one_process_ends_the_other_and_relaunch_resumes(
    victim, tiny_run_data, launch_env, tmp_path):
  workdir = tmp_path / "run"
  overrides = {"train.num_epochs": 400}  # long enough to be killed
  children = launched.start(workdir, tiny_run_data, overrides, 2, 1,
                            launch_env)
  survivor = children[1 - victim]
  try:
    tiny_run.wait_for(lambda: checkpoint.saved_steps(str(workdir)),
                      children[0])
    os.kill(children[victim].pid, signal.SIGKILL)
    killed_at = time.time()
    code, _, stderr = launched.wait([survivor], timeout=90)[0]
    assert time.time() - killed_at < 60, stderr[-2000:]
    assert code != 0, stderr[-2000:]
    if victim == 1:  # its next collective fails, or (in a barrier of a
      # save) the heartbeat thread sees process 1's heartbeat stop: named
      assert re.search(r"error: process 0 of 2: (a collective with the other "
                       r"processes failed: )?lost process 1 of 2 \(no "
                       "heartbeat", stderr), stderr[-2000:]
    else:  # process 0 hosted the coordination service: JAX ends process 1
      assert "the leader task was preempted/died" in stderr, stderr[-2000:]
  finally:
    launched.wait(children, timeout=60)
  saved = max(checkpoint.saved_steps(str(workdir)))
  # The same command again resumes (stopped 2 steps later to keep it short:
  # train.stop_after_steps may change on resume).
  results = launched.wait(launched.start(
      workdir, tiny_run_data,
      {**overrides, "train.stop_after_steps": saved + 2}, 2, 1, launch_env))
  assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
  assert f"resuming from the checkpoint of step {saved}" in results[0][1]
  assert workdirs.read_summary(workdir)["step"] == saved + 2


@pytest.mark.slow
def test_resume_on_another_process_and_device_count(tiny_run_data,
                                                    launch_env, uninterrupted,
                                                    tmp_path):
  workdir = tmp_path / "run"
  (code, _, stderr), = launched.wait(launched.start(
      workdir, tiny_run_data, {"train.stop_after_steps": 4}, 1, 1,
      launch_env))
  assert code == 143, stderr[-2000:]
  results = launched.run(workdir, tiny_run_data, {}, 2, 2, launch_env)
  assert "resuming from the checkpoint of step 4" in results[0][1]
  summary = workdirs.read_summary(workdir)
  assert (summary["status"], summary["devices"]) == ("finished", 4)
  # The replicated state carries over; the sums then run in another order.
  chex.assert_trees_all_close(_variables(workdir), _variables(uninterrupted),
                              **launched.ACROSS_COUNTS)


def test_check_command_all_reduces_over_every_process(tmp_path):
  port = launched.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
             PYTHONPATH=REPO)
  children = [subprocess.Popen(
      [sys.executable, "-m", "cnn_jax.distributed", "--check",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={index}", "--distributed_timeout=60"],
      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for index in range(2)]
  results = launched.wait(children, timeout=120)
  for index, (code, stdout, stderr) in enumerate(results):
    assert code == 0, stderr[-2000:]
    assert f"process {index} of 2: 2 local of 4 devices" in stdout
    assert (f"process {index}: all-reduce over 4 devices = 10 (expected 10)"
            ": ok") in stdout


def test_partial_distributed_flags_are_one_line(tiny_run_data, launch_env,
                                                tmp_path):
  result = tiny_run.launch(tmp_path / "run", tiny_run_data, None,
                           "--coordinator_address=localhost:1",
                           env=dict(launch_env, JAX_PLATFORMS="cpu"))
  tiny_run.assert_one_line_error(result, "--num_processes", "--process_id")
  assert not os.path.exists(tmp_path / "run")
