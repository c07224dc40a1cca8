"""The fault matrix: each way a run can be stopped, killed, damaged or given
bad input, and what the user then gets. One section per fault, in order:

  SIGTERM (preemption)             exit 143, checkpoint; rerun resumes
  SIGINT (Ctrl-C)                  exit 130, checkpoint; rerun resumes
  SIGKILL mid-epoch                rerun resumes from the last checkpoint
  SIGKILL during a save            first save: rerun starts again from step 0;
                                   a later one: resumes from the one before
  Damaged checkpoint               the previous intact one is used
  NaN                              stops naming the step; no NaN is saved
  Bad config                       a misspelt key, a wrong value type
  Bad data                         truncated file, wrong magic, label count,
                                   labels out of range, wrong rank, missing
  Finished workdir                 refused, untouched
  Changed config on resume         refused listing the keys, untouched
  Bad input                        config files, unwritable workdir, schedule
                                   longer than the run

Each test asserts what the user sees: the exit status, one line on stderr
without a traceback, the workdir left byte for byte where it must be, and a
resumed run bitwise equal (CPU) to the uninterrupted one: the tiny run of
tests/tiny_run.py, 16 steps with a checkpoint every 4 (`uninterrupted`).
"""

import errno
import glob
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

from absl import flags
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import launch
from cnn_jax import config_file
from cnn_jax.data import bundled_data_dir
from cnn_jax.data import idx
from cnn_jax.data import load_mnist
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.training import optim
from cnn_jax.training import steps
from cnn_jax.training import train
from tests import tiny_run
from tests.conftest import REPO
from tests.conftest import write_idx
from tests.conftest import write_tiny_mnist

pytestmark = [
    pytest.mark.usefixtures("launch_env"),
    # When TensorStore fails to read a damaged file, Orbax leaves a coroutine
    # behind that complains when it is garbage-collected (in whichever test).
    pytest.mark.filterwarnings(
        "ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _copy(workdir, tmp_path):
  return shutil.copytree(workdir, tmp_path / "run")


def _unfinished_saves(workdir):
  return glob.glob(os.path.join(checkpoint.checkpoint_dir(workdir),
                                "*.orbax-checkpoint-tmp*"))


@pytest.fixture(scope="module")
def preempted(tiny_run_data, launch_env, tmp_path_factory):
  """(workdir, result) of launch.py stopped by SIGTERM after step 6."""
  workdir = tmp_path_factory.mktemp("preempted") / "run"
  result = tiny_run.launch(workdir, tiny_run_data,
                           {"train.stop_after_steps": 6}, env=launch_env)
  return workdir, result


# ---------------------------------------------------------------------------
# SIGTERM (preemption)
# ---------------------------------------------------------------------------


def test_sigterm_saves_exits_143_and_the_same_config_resumes_bitwise(
    preempted, uninterrupted, tiny_run_data, tmp_path):
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
  train.train_and_evaluate(
      tiny_run.config(tiny_run_data, {"train.stop_after_steps": 6}),
      str(workdir))
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))
  # metrics.jsonl was appended to: the first part is still there, then one
  # 'resumed' record.
  records = writers.read_metrics(workdir)
  assert records[:len(writers.read_metrics(stopped))] == writers.read_metrics(
      stopped)
  assert [r["step"] for r in records if r["split"] == "resumed"] == [6]


# ---------------------------------------------------------------------------
# SIGINT (Ctrl-C)
# ---------------------------------------------------------------------------


def test_sigint_saves_exits_130_and_the_same_config_resumes_bitwise(
    uninterrupted, tiny_run_data, launch_env, tmp_path):
  workdir = tmp_path / "run"
  result = tiny_run.launch(
      workdir, tiny_run_data, env=launch_env,
      hook=tiny_run.signal_after_step(signal.SIGINT, 6))
  assert result.returncode == 130, result.stderr[-2000:]
  assert "stopped by SIGINT after step 6" in result.stderr
  assert "Traceback" not in result.stderr
  assert checkpoint.saved_steps(workdir) == [4, 6]
  summary = workdirs.read_summary(workdir)
  assert (summary["status"], summary["step"], summary["signal"]) == (
      "preempted", 6, "SIGINT")

  train.train_and_evaluate(tiny_run.config(tiny_run_data), str(workdir))
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))


# ---------------------------------------------------------------------------
# SIGKILL mid-epoch
# ---------------------------------------------------------------------------


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise(
    uninterrupted, tiny_run_data, launch_env, tmp_path):
  workdir = tmp_path / "run"
  overrides = {"checkpoint.every_steps": 2}
  process = tiny_run.launch(workdir, tiny_run_data, overrides,
                            env=launch_env, popen=True)
  tiny_run.wait_for(lambda: checkpoint.saved_steps(workdir), process)
  tiny_run.kill(process)
  assert checkpoint.saved_steps(workdir)[-1] < tiny_run.FINAL_STEP

  train.train_and_evaluate(tiny_run.config(tiny_run_data, overrides),
                           str(workdir))
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))


# ---------------------------------------------------------------------------
# SIGKILL during a save: the first one, and a later one
# ---------------------------------------------------------------------------


def _killed_during_save(step, workdir, data_dir, env, marker):
  """launch.py SIGKILLed while Orbax writes the checkpoint of `step` (every
  file written, its temporary folder not yet renamed)."""
  process = tiny_run.launch(workdir, data_dir, env=env, popen=True,
                            hook=tiny_run.hang_save(step, marker))
  tiny_run.wait_for(marker.exists, process)
  tiny_run.kill(process)
  assert os.path.isdir(os.path.join(checkpoint.checkpoint_dir(workdir),
                                    f"{step}.orbax-checkpoint-tmp"))


@pytest.fixture(scope="module")
def killed_in_first_save(tiny_run_data, launch_env, tmp_path_factory):
  """A workdir whose run was SIGKILLed inside its first save (step 4):
  metrics.jsonl, tensorboard/, config.json and checkpoints/ holding only
  4.orbax-checkpoint-tmp."""
  folder = tmp_path_factory.mktemp("killed_in_first_save")
  workdir = folder / "run"
  _killed_during_save(4, workdir, tiny_run_data, launch_env,
                      folder / "hanging")
  return workdir


def test_sigkill_during_the_first_save_then_the_same_config_starts_again(
    killed_in_first_save, uninterrupted, tiny_run_data, tmp_path):
  workdir = _copy(killed_in_first_save, tmp_path)
  assert checkpoint.saved_steps(workdir) == []
  assert _unfinished_saves(workdir)
  before = writers.read_metrics(workdir)
  assert before  # the dead attempt logged steps

  summary = train.train_and_evaluate(tiny_run.config(tiny_run_data),
                                     str(workdir))
  # From step 0 to the end, equal to a run never killed.
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))
  assert summary["resumed_from_step"] == 0
  assert checkpoint.saved_steps(workdir) == [4, 8, 12, 16]
  assert not _unfinished_saves(workdir)
  # What the dead attempt logged is kept, then superseded from step 0 on.
  records = writers.read_metrics(workdir)
  assert records[:len(before)] == before
  assert records[len(before)] == {"step": 0, "split": "resumed", "epoch": 0.0}


def test_sigkill_during_a_later_save_resumes_from_the_checkpoint_before(
    uninterrupted, tiny_run_data, launch_env, tmp_path):
  workdir = tmp_path / "run"
  _killed_during_save(8, workdir, tiny_run_data, launch_env,
                      tmp_path / "hanging")
  assert checkpoint.saved_steps(workdir) == [4]

  train.train_and_evaluate(tiny_run.config(tiny_run_data), str(workdir))
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))
  assert not _unfinished_saves(workdir)
  assert [r["step"] for r in writers.read_metrics(workdir)
          if r["split"] == "resumed"] == [4]


def test_no_complete_checkpoint_starts_again_only_with_the_saved_config(
    tiny_run_data, tmp_path):
  config = tiny_run.config(tiny_run_data)
  # Records but no saved config (an older workdir): started again.
  (tmp_path / "metrics.jsonl").write_text('{"step": 3, "split": "train"}\n')
  assert workdirs.prepare(str(tmp_path), config) is False
  # config.json of another run: refused, naming the keys.
  other = tiny_run.config(tiny_run_data, {"optim.learning_rate": 0.01})
  workdirs.write_config(str(tmp_path), other)
  with pytest.raises(workdirs.WorkdirInUseError,
                     match=r"no complete checkpoint, started with another "
                     r"config .*optim.learning_rate: 0.01 -> 0.003"):
    workdirs.prepare(str(tmp_path), config)
  assert workdirs.prepare(str(tmp_path), other) is False
  # A diverged attempt's summary.json is checked too.
  os.remove(tmp_path / "config.json")
  workdirs.write_summary(str(tmp_path), {"status": "diverged",
                                         "config": other.to_dict()})
  with pytest.raises(workdirs.WorkdirInUseError, match="learning_rate"):
    workdirs.prepare(str(tmp_path), config)


# ---------------------------------------------------------------------------
# Damaged checkpoint
# ---------------------------------------------------------------------------


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                    recursive=True)
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_a_bit(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


DAMAGE = {
    "truncated array file": lambda d: _truncate(_largest_array_file(d)),
    "flipped bit in array file": lambda d: _flip_a_bit(_largest_array_file(d)),
    "deleted array index": lambda d: os.remove(
        os.path.join(d, "state", "manifest.ocdbt")),
    "truncated meta": lambda d: _truncate(os.path.join(d, "meta", "metadata")),
}


def _step_dir(workdir, step):
  return os.path.join(checkpoint.checkpoint_dir(workdir), str(step))


def _restore_latest(workdir, config):
  abstract = steps.abstract_train_state(config, (28, 28, 1),
                                        tiny_run.STEPS_PER_EPOCH)
  manager = checkpoint.make_manager(workdir)
  try:
    return checkpoint.restore_latest(manager, abstract)
  finally:
    manager.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_falls_back_to_previous(
    preempted, uninterrupted, tiny_run_data, tmp_path, caplog, damage):
  workdir = _copy(preempted[0], tmp_path)
  DAMAGE[damage](_step_dir(workdir, 6))
  config = tiny_run.config(tiny_run_data)
  with caplog.at_level(logging.WARNING):
    state, meta = _restore_latest(workdir, config)
  assert int(state.step) == 4 and meta["step"] == 4
  chex.assert_trees_all_equal(state.params,
                              tiny_run.arrays(uninterrupted, 4,
                                              config)["params"])
  assert "checkpoint step 6" in caplog.text


def test_damaged_latest_checkpoint_resumes_from_the_one_before(
    preempted, uninterrupted, tiny_run_data, tmp_path, caplog):
  workdir = _copy(preempted[0], tmp_path)
  latest = _step_dir(workdir, 6)
  with open(os.path.join(latest, "meta", "metadata"), "w") as f:
    f.write('{"step": ')  # a write cut short
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(tiny_run.config(tiny_run_data), str(workdir))
  assert "checkpoint step 6" in caplog.text
  assert os.path.isdir(latest + ".damaged")  # set aside, not deleted
  tiny_run.assert_same_run(workdir, uninterrupted,
                           tiny_run.config(tiny_run_data))


def test_no_intact_checkpoint_is_a_clear_error(preempted, tiny_run_data,
                                               launch_env, tmp_path):
  config = tiny_run.config(tiny_run_data)
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
    _restore_latest(tmp_path / "empty", config)
  workdir = _copy(preempted[0], tmp_path)
  for step in (4, 6):
    DAMAGE["truncated array file"](_step_dir(workdir, step))
  with pytest.raises(checkpoint.CheckpointError,
                     match="no intact checkpoint .* step 6.* step 4"):
    _restore_latest(workdir, config)
  # launch.py: a warning per damaged checkpoint, then the error; nothing
  # in the workdir is touched (the files stay for inspection). (The reads
  # Orbax abandons print nothing whenever they end or are collected:
  # runs/abandoned_reads.py, tests/runs/test_abandoned_reads.py.)
  before = tiny_run.snapshot(workdir)
  result = tiny_run.launch(workdir, tiny_run_data, env=launch_env)
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error: ")]
  assert len(errors) == 1, errors
  assert errors[0].startswith("error: no intact checkpoint in ")
  assert "checkpoint step 6: " in errors[0]
  assert "checkpoint step 4: " in errors[0]
  assert tiny_run.snapshot(workdir) == before


# ---------------------------------------------------------------------------
# NaN
# ---------------------------------------------------------------------------


def test_nan_stops_with_status_diverged_and_keeps_the_last_good_checkpoint(
    tiny_run_data, tmp_path, monkeypatch):
  real_step = steps.train_step

  def poisoned_step(state, batch, **kwargs):
    # From the 6th step on, the images are NaN.
    image = batch["image"].astype(np.float32)
    image = jnp.where(state.step >= 5, np.nan, image)
    return real_step(state, {**batch, "image": image}, **kwargs)

  monkeypatch.setattr(steps, "train_step", poisoned_step)
  config = tiny_run.config(tiny_run_data, {
      "train.num_epochs": 1, "train.log_every_steps": 4,
      "checkpoint.every_steps": 2})
  workdir = tmp_path / "run"
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* step 6"):
    train.train_and_evaluate(config, str(workdir))
  summary = workdirs.read_summary(workdir)
  assert summary["status"] == "diverged" and summary["step"] == 6
  assert summary["last_checkpoint"] == 4
  assert checkpoint.saved_steps(workdir) == [2, 4]
  chex.assert_tree_all_finite(tiny_run.arrays(workdir, 4, config))


def test_non_finite_loss_stops_launch_in_one_line_naming_the_step(
    tiny_run_data, launch_env, tmp_path):
  workdir = tmp_path / "run"
  result = tiny_run.launch(workdir, tiny_run_data, {
      "optim.name": "sgd", "optim.schedule": "constant",
      "optim.learning_rate": 1e12}, env=launch_env)
  tiny_run.assert_one_line_error(result, "training diverged: non-finite loss")
  summary = workdirs.read_summary(workdir)
  assert summary["status"] == "diverged"
  assert f"at step {summary['step']}" in result.stderr


def test_a_poisoned_state_is_never_saved(preempted, tiny_run_data, tmp_path):
  workdir = _copy(preempted[0], tmp_path)
  config = tiny_run.config(tiny_run_data)
  state, _ = _restore_latest(workdir, config)
  params = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan),
                        state.params)
  manager = checkpoint.make_manager(workdir, config.checkpoint)
  with pytest.raises(FloatingPointError, match="after step 7 holds NaN"):
    checkpoint.save(manager, state.replace(step=state.step + 1,
                                           params=params), {"step": 7})
  manager.close()
  assert checkpoint.saved_steps(workdir) == [4, 6]


# ---------------------------------------------------------------------------
# Bad config: a misspelt key, a wrong value type (a config file that cannot
# be loaded: Bad input, below)
# ---------------------------------------------------------------------------


def test_misspelt_config_key_is_an_error(tiny_run_data, tmp_path):
  workdir = tmp_path / "run"
  result = tiny_run.launch(workdir, tiny_run_data, None,
                           "--config.optim.learnig_rate=0.1")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2
  assert len(lines) == 1 and "learnig_rate" in lines[0], lines
  assert 'Did you mean "learning_rate"' in lines[0]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_wrong_value_type_is_an_error(tiny_run_data, tmp_path):
  workdir = tmp_path / "run"
  result = tiny_run.launch(workdir, tiny_run_data, None,
                           "--config.train.num_epochs=many")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2
  assert len(lines) == 1 and "num_epochs=many" in lines[0], lines
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# Bad data: truncated file, wrong magic, label count mismatch, labels out of
# range, wrong rank, missing files
# ---------------------------------------------------------------------------


def _corrupt_copy(tmp_path, mutate):
  src = os.path.join(bundled_data_dir("mnist"), "t10k-labels-idx1-ubyte.gz")
  with gzip.open(src, "rb") as f:
    raw = bytearray(f.read())
  raw = mutate(raw)
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes(raw))
  return path


def test_bad_magic_number_is_rejected_naming_the_file(tmp_path):
  def mutate(raw):
    raw[0] = 7
    return raw
  path = _corrupt_copy(tmp_path, mutate)
  with pytest.raises(idx.IdxFormatError, match="t10k-labels.*magic"):
    idx.read_idx(path)


def test_header_count_that_disagrees_with_data_is_rejected(tmp_path):
  def mutate(raw):
    raw[4:8] = (20000).to_bytes(4, "big")  # header claims 20000 labels
    return raw
  path = _corrupt_copy(tmp_path, mutate)
  with pytest.raises(idx.IdxFormatError, match="needs 20000 data bytes"):
    idx.read_idx(path)


def test_truncated_gzip_is_rejected(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  src = os.path.join(bundled_data_dir("mnist"), "train-labels-idx1-ubyte.gz")
  with open(src, "rb") as f:
    path.write_bytes(f.read()[:5000])
  with pytest.raises(idx.IdxFormatError, match="train-images.*cannot be read"):
    idx.read_idx(path)


def test_wrong_image_shape_is_rejected(tmp_path):
  write_idx(tmp_path / "x.gz", np.zeros((3, 32, 32), np.uint8))
  with pytest.raises(idx.IdxFormatError, match=r"expected \(N, 28, 28\)"):
    idx.read_idx(tmp_path / "x.gz", expected_ndim=3,
                 expected_shape_tail=(28, 28))


@pytest.mark.parametrize("name, array, expected", [
    ("t10k-labels-idx1-ubyte.gz", np.zeros((100, 1), np.uint8),
     "t10k-labels-idx1-ubyte.gz: header states 2 dimensions, expected 1"),
    ("train-images-idx3-ubyte.gz", np.zeros((256, 28, 28, 1), np.uint8),
     "train-images-idx3-ubyte.gz: header states 4 dimensions, expected 3"),
])
def test_wrong_rank_is_rejected_naming_the_file(tiny_mnist_dir, name, array,
                                                expected):
  write_idx(tiny_mnist_dir / name, array)
  with pytest.raises(idx.IdxFormatError, match=expected):
    load_mnist(str(tiny_mnist_dir))


def test_images_and_labels_count_mismatch(tiny_mnist_dir):
  write_idx(tiny_mnist_dir / "t10k-labels-idx1-ubyte.gz",
            np.zeros(99, np.uint8))
  with pytest.raises(idx.IdxFormatError, match="100 images but.*99 labels"):
    load_mnist(str(tiny_mnist_dir))


def test_labels_out_of_range_are_rejected_naming_the_file(tiny_mnist_dir):
  labels = np.zeros(256, np.uint8)
  labels[17] = 10
  write_idx(tiny_mnist_dir / "train-labels-idx1-ubyte.gz", labels)
  with pytest.raises(idx.IdxFormatError,
                     match="train-labels-idx1-ubyte.gz: label 10 is not a "
                     "digit 0-9"):
    load_mnist(str(tiny_mnist_dir))


def test_missing_directory_and_missing_file_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    load_mnist(str(tmp_path / "no_such_dir"))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    load_mnist(str(tmp_path))


def test_missing_data_directory_is_named(tmp_path):
  workdir = tmp_path / "run"
  result = tiny_run.launch(workdir, tmp_path / "nowhere")
  tiny_run.assert_one_line_error(result, "nowhere")
  assert os.listdir(workdir) == []  # nothing written


def test_bad_data_file_stops_launch_in_one_line_naming_it(tmp_path):
  data_dir = write_tiny_mnist(tmp_path)
  labels = np.zeros(100, np.uint8)
  labels[0] = 12
  write_idx(data_dir / "t10k-labels-idx1-ubyte.gz", labels)
  workdir = tmp_path / "run"
  result = tiny_run.launch(workdir, data_dir)
  tiny_run.assert_one_line_error(result, "t10k-labels-idx1-ubyte.gz",
                                 "label 12 is not a digit")
  assert os.listdir(workdir) == []  # nothing written


# ---------------------------------------------------------------------------
# Finished workdir
# ---------------------------------------------------------------------------


def test_finished_workdir_is_refused_in_one_line_and_left_intact(
    uninterrupted, tiny_run_data, launch_env, tmp_path):
  workdir = _copy(uninterrupted, tmp_path)
  before = tiny_run.snapshot(workdir)
  result = tiny_run.launch(workdir, tiny_run_data, env=launch_env)
  tiny_run.assert_one_line_error(result, "already holds a run (finished",
                                 "larger --config.train.num_epochs")
  assert tiny_run.snapshot(workdir) == before


def test_finished_run_is_refused_unless_num_epochs_grows(
    uninterrupted, tiny_run_data, tmp_path):
  workdir = _copy(uninterrupted, tmp_path)
  with pytest.raises(workdirs.WorkdirInUseError, match="already holds a run"):
    train.train_and_evaluate(tiny_run.config(tiny_run_data), str(workdir))
  longer = tiny_run.config(tiny_run_data, {"train.num_epochs": 3,
                                           "train.log_every_steps": 5})
  summary = train.train_and_evaluate(longer, str(workdir))
  assert summary["steps"] == 24 and summary["resumed_from_step"] == 16
  kept = json.loads((workdir / "summary.step16.json").read_text())
  assert kept["status"] == "finished" and kept["steps"] == 16


# ---------------------------------------------------------------------------
# Changed config on resume
# ---------------------------------------------------------------------------


def test_config_that_changes_the_run_is_refused_listing_the_keys(
    preempted, tiny_run_data, tmp_path):
  workdir = _copy(preempted[0], tmp_path)
  before = tiny_run.snapshot(workdir)
  config = tiny_run.config(tiny_run_data, {
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
  assert tiny_run.snapshot(workdir) == before


def test_changed_config_is_refused_by_launch_in_one_line_and_left_intact(
    preempted, tiny_run_data, launch_env, tmp_path):
  workdir = _copy(preempted[0], tmp_path)
  before = tiny_run.snapshot(workdir)
  result = tiny_run.launch(workdir, tiny_run_data,
                           {"optim.learning_rate": 0.01}, env=launch_env)
  tiny_run.assert_one_line_error(
      result, "differs from the checkpoint of step 6",
      "optim.learning_rate: 0.003 -> 0.01")
  assert tiny_run.snapshot(workdir) == before


def test_changed_config_after_a_kill_before_the_first_checkpoint_is_refused(
    killed_in_first_save, tiny_run_data, launch_env, tmp_path):
  workdir = _copy(killed_in_first_save, tmp_path)
  before = tiny_run.snapshot(workdir)
  result = tiny_run.launch(workdir, tiny_run_data,
                           {"optim.learning_rate": 0.01}, env=launch_env)
  tiny_run.assert_one_line_error(
      result, "no complete checkpoint, started with another config",
      "optim.learning_rate: 0.003 -> 0.01")
  assert tiny_run.snapshot(workdir) == before  # the unfinished save too


# ---------------------------------------------------------------------------
# Bad input: a --config file that is missing, does not parse, fails to
# import, has no get_config() or returns None, or whose get_config() raises;
# a workdir that cannot be created or written (below a regular file, a
# regular file itself, permission denied, read-only or full disk; an
# existing one is left byte for byte); a learning-rate schedule (warm-up,
# decay) longer than the run. Most cases run launch.py's parse_flags and
# main in this process (an error found before any data is read costs
# milliseconds); a few run launch.py as a user does. Running as root,
# permission denied cannot be made with chmod: the OSError is injected
# where the run meets it.
# ---------------------------------------------------------------------------

MNIST = os.path.join(REPO, "configs", "mnist.py")


@pytest.fixture
def launch_here(monkeypatch, capsys):
  """Runs launch.py's parse_flags and main in this process:
  launch_here(*args, config={dotted key: value}) -> (exit status, stderr
  lines). The `config` values are set on the parsed config (as
  --config.key=value would, without defining absl flags for them again)."""

  def run(*args, config=None):
    argv = ["launch.py", *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads it
    flags.FLAGS.unparse_flags()  # no flag keeps an earlier test's value
    capsys.readouterr()
    try:
      remaining = launch.parse_flags(argv)
      for key, value in (config or {}).items():
        *sections, name = key.split(".")
        node = flags.FLAGS.config
        for section in sections:
          node = node[section]
        node[name] = value
      status = launch.main(remaining)
    except SystemExit as e:
      status = e.code
    return status, capsys.readouterr().err.splitlines()

  return run


def _assert_one_line(status, lines, *named):
  assert status == 1, lines
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
  for part in named:
    assert part in lines[0], (part, lines[0])


def _tiny_run(data_dir):
  """Config values for a few quick steps on conftest's tiny MNIST."""
  return {"data.data_dir": str(data_dir), "data.batch_size": 64,
          "data.eval_batch_size": 100, "train.num_epochs": 1}


# ---- a workdir that cannot be created or written ----


def test_workdir_below_a_regular_file(launch_here, tmp_path):
  (tmp_path / "afile").write_text("not a folder\n")
  before = tiny_run.snapshot(tmp_path)
  workdir = tmp_path / "afile" / "x" / "y"
  status, lines = launch_here("--config", MNIST, f"--workdir={workdir}")
  _assert_one_line(status, lines, f"cannot write the workdir {str(workdir)!r}",
                   f"Not a directory: {str(tmp_path / 'afile' / 'x')!r}")
  assert tiny_run.snapshot(tmp_path) == before


def test_workdir_that_is_a_regular_file(launch_here, tmp_path):
  (tmp_path / "afile").write_text("not a folder\n")
  before = tiny_run.snapshot(tmp_path)
  status, lines = launch_here("--config", MNIST,
                              f"--workdir={tmp_path / 'afile'}")
  _assert_one_line(status, lines, "a file, not a folder",
                   repr(str(tmp_path / "afile")))
  assert tiny_run.snapshot(tmp_path) == before


def test_permission_denied_creating_the_workdir(launch_here, monkeypatch,
                                                tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  (locked / "other_run.txt").write_text("someone else's\n")
  before = tiny_run.snapshot(tmp_path)
  real_makedirs = os.makedirs

  def makedirs(path, *args, **kwargs):
    if str(path).startswith(str(locked)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return real_makedirs(path, *args, **kwargs)

  monkeypatch.setattr(os, "makedirs", makedirs)
  workdir = locked / "run"
  status, lines = launch_here("--config", MNIST, f"--workdir={workdir}")
  _assert_one_line(status, lines, "Permission denied", repr(str(workdir)))
  assert tiny_run.snapshot(tmp_path) == before


def test_unknown_cpu_malloc_setting_is_one_line_before_any_write(
    launch_here, tmp_path):
  workdir = tmp_path / "run"
  status, lines = launch_here("--config", MNIST, f"--workdir={workdir}",
                              config={"train.cpu_malloc": "yes"})
  _assert_one_line(status, lines, "config.train.cpu_malloc='yes'",
                   "auto, keep, default")
  assert not workdir.exists()


def _statvfs_with(**changes):
  """os.statvfs whose results have `changes` (f_flag=os.ST_RDONLY:
  read-only; f_bfree=0, f_bavail=0: full)."""
  real_statvfs = os.statvfs

  def statvfs(path):
    result = real_statvfs(path)
    fields = {name: getattr(result, name) for name in dir(result)
              if name.startswith("f_")}
    fields.update(changes)
    return type("statvfs_result", (), fields)()

  return statvfs


@pytest.mark.parametrize("patch, message", [
    ("read_only", "Read-only file system"),
    ("no_access", "Permission denied"),
    ("full", "No space left on device"),
], ids=["EROFS", "EACCES", "ENOSPC"])
def test_existing_workdir_that_cannot_be_written_is_left_as_it_was(
    launch_here, monkeypatch, tmp_path, patch, message):
  # A run stopped before its first checkpoint (what resuming would extend).
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')
  (workdir / "notes.txt").write_text("kept\n")
  before = tiny_run.snapshot(tmp_path)
  if patch == "read_only":
    monkeypatch.setattr(os, "statvfs", _statvfs_with(f_flag=os.ST_RDONLY))
  elif patch == "full":
    monkeypatch.setattr(os, "statvfs", _statvfs_with(f_bfree=0, f_bavail=0))
  else:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        str(path) != str(workdir) and real_access(path, mode, **kw)))
  status, lines = launch_here("--config", MNIST, f"--workdir={workdir}")
  _assert_one_line(status, lines, f"cannot write the workdir {str(workdir)!r}",
                   message)
  assert tiny_run.snapshot(tmp_path) == before


@pytest.mark.parametrize("where, code", [
    ("checkpoints", errno.EROFS),  # Orbax creates <workdir>/checkpoints
    ("metrics.jsonl", errno.ENOSPC),
    ("tensorboard", errno.EACCES),
], ids=["EROFS_checkpoints", "ENOSPC_metrics", "EACCES_tensorboard"])
def test_start_up_write_errors_name_the_path(launch_here, monkeypatch,
                                             tiny_mnist_dir, tmp_path, where,
                                             code):
  # Past check_writable (a race, or a file system that misreports): the
  # failing write itself is reported, in one line naming its path.
  workdir = tmp_path / "run"
  culprit = str(workdir / where)
  error = OSError(code, os.strerror(code), culprit)
  if where == "metrics.jsonl":
    real_open = open

    def fake_open(path, *args, **kwargs):
      if str(path) == culprit:
        raise error
      return real_open(path, *args, **kwargs)

    monkeypatch.setattr(writers, "open", fake_open, raising=False)
  else:
    real_makedirs = os.makedirs

    def makedirs(path, *args, **kwargs):
      if os.path.abspath(path) == os.path.abspath(culprit):
        raise error
      return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
  status, lines = launch_here("--config", MNIST, f"--workdir={workdir}",
                              config=_tiny_run(tiny_mnist_dir))
  _assert_one_line(status, lines, f"cannot write the workdir {str(workdir)!r}",
                   os.strerror(code), culprit)


def test_a_write_without_a_file_name_is_named_by_its_path():
  # A full disk on write() has no filename: the path being written is named.
  with pytest.raises(workdirs.WorkdirError) as raised:
    with workdirs.writing("runs/x", "runs/x/metrics.jsonl"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert str(raised.value) == ("cannot write the workdir 'runs/x': No space "
                               "left on device: 'runs/x/metrics.jsonl'")


def test_workdir_below_a_regular_file_from_the_command_line(tmp_path):
  (tmp_path / "afile").write_text("not a folder\n")
  before = tiny_run.snapshot(tmp_path)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--config", MNIST,
       "--workdir=afile/x/y"], cwd=tmp_path, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      "error: cannot write the workdir 'afile/x/y': Not a directory: "
      "'afile/x'"]
  assert tiny_run.snapshot(tmp_path) == before


# ---- a broken config file ----

_RAISING_CONFIG = '''\
import ml_collections


def _dataset_names():
  raise RuntimeError("no such dataset: 'mnistt'")


def get_config():
  config = ml_collections.ConfigDict()
  config.names = _dataset_names()
  return config
'''


def test_get_config_that_raises_shows_only_the_users_frames(tmp_path):
  (tmp_path / "x.py").write_text(_RAISING_CONFIG)
  workdir = tmp_path / "run"  # an existing one, with a run in it
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')
  before = tiny_run.snapshot(tmp_path)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--config", "x.py",
       "--workdir=run", "--config.train.num_epochs=2"], cwd=tmp_path,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      "error: x.py: get_config() raised RuntimeError: no such dataset: "
      "'mnistt'",
      "  x.py:10 in get_config",
      "  x.py:5 in _dataset_names"]
  assert tiny_run.snapshot(tmp_path) == before


def test_get_config_argument_error_names_the_config_file_line(
    launch_here, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)  # paths are shown relative to it
  status, lines = launch_here("--config", "configs/ucr.py:NoSuchSet",
                              f"--workdir={tmp_path / 'run'}")
  assert status == 1
  assert lines[0].startswith(
      "error: configs/ucr.py: get_config('NoSuchSet') raised ValueError: "
      "configs/ucr.py:NoSuchSet: not one of GunPoint")
  assert len(lines) == 2 and lines[1].startswith("  configs/ucr.py:")
  assert lines[1].endswith(" in get_config")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, source, message", [
    ("missing.py", None, "missing.py: no such config file"),
    ("syntax.py", "def get_config(:\n  pass\n",
     "syntax.py:1: SyntaxError: invalid syntax"),
    ("indent.py", "def get_config():\nreturn 1\n",
     "indent.py:2: IndentationError: expected an indented block"),
    ("imports.py", "import no_such_module_xyz\n",
     "imports.py: loading it raised ModuleNotFoundError: No module named "
     "'no_such_module_xyz'"),
    ("empty.py", "", "empty.py has no get_config() function"),
    ("none.py", "def get_config():\n  pass\n",
     "none.py: get_config() returned None (no return statement?)"),
], ids=["missing", "syntax", "indentation", "import", "no_get_config",
        "returns_none"])
def test_config_file_that_cannot_be_loaded_is_named(
    launch_here, monkeypatch, tmp_path, name, source, message):
  monkeypatch.chdir(tmp_path)
  if source is not None:
    (tmp_path / name).write_text(source)
  before = tiny_run.snapshot(tmp_path)
  status, lines = launch_here("--config", name, "--workdir=run")
  assert status == 1
  assert lines[0].startswith(f"error: {message}")  # Python may add words
  # imports.py: the import line is the user's frame; the others: one line.
  assert lines[1:] == (["  imports.py:1 in <module>"] if name == "imports.py"
                       else [])
  assert tiny_run.snapshot(tmp_path) == before


def test_get_config_oserror_is_reported_at_once(launch_here, monkeypatch,
                                                tmp_path):
  # ml_collections defers an OSError of get_config() to the config's first
  # use, where it surfaced as a traceback with "Configuration is not
  # available because of an earlier failure to load".
  monkeypatch.chdir(tmp_path)
  (tmp_path / "reads.py").write_text(
      "def get_config():\n  return open('classes.txt').read()\n")
  status, lines = launch_here("--config", "reads.py", "--workdir=run",
                              "--mode=evaluate")
  assert status == 1
  assert lines == [
      "error: reads.py: get_config() raised FileNotFoundError: [Errno 2] No "
      "such file or directory: 'classes.txt'",
      "  reads.py:2 in get_config"]


def test_good_config_files_still_load():
  config = config_file.load(os.path.join(REPO, "configs", "ucr.py:OSULeaf"))
  assert config.data.ucr_name == "OSULeaf" and config.model.num_classes == 6
  with pytest.raises(AttributeError):
    config.no_such_key = 1  # locked, as ml_collections' lock_config=True


# ---- a learning-rate schedule that does not fit the run ----


@pytest.mark.parametrize("config_file, values, message", [
    ("mnist.py", {"train.num_epochs": 1, "optim.schedule": "warmup_cosine",
                  "optim.warmup_epochs": 2.0},
     "config.optim.warmup_epochs=2.0 must be shorter than "
     "config.train.num_epochs=1 (warmup_cosine)"),
    ("ucr.py", {"train.num_epochs": 2},
     "config.optim.warmup_epochs=5.0 must be shorter than "
     "config.train.num_epochs=2 (warmup_cosine)"),
    ("mnist.py", {"train.num_epochs": 1, "optim.warmup_epochs": 2.0},
     "config.optim.warmup_epochs=2.0 must not be longer than "
     "config.train.num_epochs=1 (one_cycle)"),
    ("mnist.py", {"optim.schedule": "cosine", "optim.end_lr_factor": -0.1},
     "config.optim.end_lr_factor=-0.1 is not in [0, 1]"),
    ("mnist.py", {"train.num_epochs": 0},
     "config.train.num_epochs=0 must be > 0"),
    ("mnist_sweep.py", {"train.num_epochs": 1,
                        "optim.schedule": "warmup_cosine",
                        "optim.warmup_epochs": 1.0},
     "config.optim.warmup_epochs=1.0 must be shorter than "
     "config.train.num_epochs=1 (warmup_cosine)"),
    ("mnist_search.py", {"sweep.search": "random", "train.num_epochs": 1,
                         "optim.schedule": "warmup_cosine",
                         "optim.warmup_epochs": 1.0},
     "config.optim.warmup_epochs=1.0 must be shorter than "
     "config.train.num_epochs=1 (warmup_cosine)"),
    ("mnist_search.py", {"sweep.space.optim.learning_rate": (
        "loguniform", 1e-4, 1e-1)},
     "config.sweep.space.optim.learning_rate=('loguniform', 0.0001, 0.1) is "
     "not a distribution"),
], ids=["warmup_cosine", "ucr", "one_cycle", "end_lr_factor", "no_epochs",
        "sweep", "search", "search_space"])
def test_schedule_that_does_not_fit_the_run_is_named_before_any_io(
    launch_here, tmp_path, config_file, values, message):
  workdir = tmp_path / "run"  # an existing one: left as it was
  workdir.mkdir()
  (workdir / "notes.txt").write_text("kept\n")
  before = tiny_run.snapshot(tmp_path)
  status, lines = launch_here(
      "--config", os.path.join(REPO, "configs", config_file),
      f"--workdir={workdir}", config=values)
  _assert_one_line(status, lines, message)
  assert tiny_run.snapshot(tmp_path) == before


def _optim_config(schedule, warmup_epochs):
  return ml_collections.ConfigDict({
      "schedule": schedule, "warmup_epochs": warmup_epochs,
      "end_lr_factor": 0.0})


def test_check_schedule_counts_the_warm_up_in_whole_steps():
  # 0.9 epochs of 2 steps round to 2 steps: all of a 1-epoch run.
  config = _optim_config("warmup_cosine", 0.9)
  optim.check_schedule(config, 1)  # in epochs it fits
  with pytest.raises(ValueError, match=(
      r"config.optim.warmup_epochs=0.9 \(2 steps\) must be shorter than "
      r"config.train.num_epochs=1 \(2 steps of 2\) \(warmup_cosine\)")):
    optim.check_schedule(config, 1, steps_per_epoch=2)
  # one_cycle may warm up for the whole run (not longer); constant and
  # cosine read no warm-up.
  optim.check_schedule(_optim_config("one_cycle", 1.0), 1, steps_per_epoch=2)
  optim.check_schedule(_optim_config("constant", 9.0), 1, steps_per_epoch=2)
  optim.check_schedule(_optim_config("cosine", 9.0), 1, steps_per_epoch=2)
  with pytest.raises(ValueError, match=r"warmup_epochs=-1.0 must be >= 0"):
    optim.check_schedule(_optim_config("one_cycle", -1.0), 1)
  with pytest.raises(ValueError, match=r"config.optim.schedule='cosin' is "):
    optim.check_schedule(_optim_config("cosin", 0.0), 1)


def test_evaluate_checks_the_schedule_too():
  # --mode=evaluate and heatmap build the schedule through
  # learning_rate_schedule (abstract_train_state): the same named error
  # instead of optax's "requires positive decay_steps".
  config = ml_collections.ConfigDict({
      "optim": _optim_config("warmup_cosine", 2.0).to_dict(),
      "train": {"num_epochs": 1}})
  config.optim.learning_rate = 0.1
  with pytest.raises(ValueError, match="must be shorter than"):
    steps.learning_rate_schedule(config, steps_per_epoch=10)
