"""The tiny MNIST run that the resume and fault tests stop, kill and compare.

256 images in batches of 32: 8 steps per epoch, 16 in all. Log windows of 3
steps straddle the stops; a checkpoint every 4 steps, all kept, so mid-run
states can be compared. `config` builds the run in this process, `launch`
runs launch.py with the same config in a subprocess, optionally after a
`hook` (a few lines of Python: `hang_save`, `signal_after_step`) that puts a
fault at a known step. The fixtures that run it are in conftest.py
(`tiny_run_data`, `launch_env`, `uninterrupted`).
"""

import os
import signal
import subprocess
import sys
import time

import chex

from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.training import steps
from configs import mnist as mnist_config
from tests.conftest import REPO

BASE = {"data.batch_size": 32, "data.eval_batch_size": 64,
        "train.num_epochs": 2, "train.log_every_steps": 3,
        "checkpoint.every_steps": 4, "checkpoint.keep": 10}
STEPS_PER_EPOCH = 8
FINAL_STEP = 16
# Wall-clock limit of each launch.py subprocess (seconds).
TIMEOUT = 300


def config(data_dir, overrides=None):
  """The tiny run's config: configs/mnist.py with BASE and `overrides`
  ({'section.key': value})."""
  run_config = mnist_config.get_config()
  run_config.data.data_dir = str(data_dir)
  for key, value in {**BASE, **(overrides or {})}.items():
    section, name = key.split(".")
    run_config[section][name] = value
  return run_config


def launch_args(workdir, data_dir, overrides=None, *flags,
                config_file="mnist.py"):
  """launch.py's flags for the same config as config(data_dir, overrides)
  (with another configs/`config_file`: that config with BASE and
  `overrides`; data_dir None: the config's own)."""
  data = [] if data_dir is None else [f"--config.data.data_dir={data_dir}"]
  args = ["--config", os.path.join(REPO, "configs", config_file),
          f"--workdir={workdir}", *data, *flags]
  return args + [f"--config.{k}={v}"
                 for k, v in {**BASE, **(overrides or {})}.items()]


# Runs launch.py's main as `python launch.py` does, after the hook's code.
_RUN_LAUNCH = """
from absl import app
import launch
app.run(launch.main, flags_parser=launch.parse_flags)
"""


def launch(workdir, data_dir, overrides=None, *flags, env=None, popen=False,
           hook=None, config_file="mnist.py"):
  """launch.py on the tiny run: a finished CompletedProcess (text stdout and
  stderr), or with popen=True the running Popen. `hook`: Python code run in
  the subprocess before launch.py's main; config_file: as for
  launch_args."""
  if hook is None:
    command = [sys.executable, os.path.join(REPO, "launch.py")]
  else:
    command = [sys.executable, "-c", hook + _RUN_LAUNCH]
  command += launch_args(workdir, data_dir, overrides, *flags,
                         config_file=config_file)
  if popen:
    return subprocess.Popen(command, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT, check=False)


def hang_save(step, marker):
  """A hook: the save of `step` hangs with all its files written, just before
  Orbax renames `<step>.orbax-checkpoint-tmp` into place (the last moment a
  kill can cut it short), after creating the file `marker`."""
  return f"""
import os, time
_rename = os.rename
def _hang_before_the_last_rename(src, dst, *args, **kwargs):
  if (str(src).endswith(".orbax-checkpoint-tmp")
      and os.path.basename(str(dst)) == "{int(step)}"):
    open({str(marker)!r}, "w").close()
    time.sleep({TIMEOUT})
  return _rename(src, dst, *args, **kwargs)
os.rename = _hang_before_the_last_rename
"""


def signal_after_step(signum, step):
  """A hook: the process sends itself `signum` (through the OS, as Ctrl-C or
  a scheduler would) once it has logged the train window ending at
  `step`."""
  return f"""
import os
from cnn_jax.runs import writers
_write = writers.MetricWriter.write
def _write_then_signal(self, step, split, metrics):
  _write(self, step, split, metrics)
  if split == "train" and step == {int(step)}:
    os.kill(os.getpid(), {int(signum)})
writers.MetricWriter.write = _write_then_signal
"""


def wait_for(condition, process, timeout=TIMEOUT):
  """Polls `condition()` until it holds; fails (killing `process`) if the
  process ends first or `timeout` seconds pass."""
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      _, stderr = process.communicate(timeout=60)
      raise AssertionError(f"launch.py ended first ({process.returncode}): "
                           f"{stderr[-2000:]}")
    if time.time() > deadline:
      kill(process)
      raise AssertionError(f"timed out after {timeout} s")
    time.sleep(0.01)


def kill(process):
  """SIGKILLs `process` (by its pid) and waits for it; its stderr."""
  os.kill(process.pid, signal.SIGKILL)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  return stderr


def arrays(workdir, step, run_config):
  """The checkpointed TrainState's arrays at `step`."""
  abstract = steps.abstract_train_state(run_config, (28, 28, 1),
                                        STEPS_PER_EPOCH)
  manager = checkpoint.make_manager(workdir)
  state, _ = checkpoint.restore(manager, abstract, step)
  manager.close()
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "rng": state.rng}


def metrics(workdir):
  """The run's metrics as it finally went, without timings."""
  return [{k: v for k, v in record.items() if k != "img_per_s"}
          for record in writers.drop_superseded(writers.read_metrics(workdir))
          if record["split"] != "resumed"]


def assert_same_run(workdir, reference, run_config):
  """`workdir` finished with bitwise the same final state, metrics and test
  results as the run in `reference`."""
  chex.assert_trees_all_equal(arrays(workdir, FINAL_STEP, run_config),
                              arrays(reference, FINAL_STEP, run_config))
  assert metrics(workdir) == metrics(reference)
  summary = workdirs.read_summary(workdir)
  expected = workdirs.read_summary(reference)
  assert summary["status"] == "finished"
  assert summary["test_metrics"] == expected["test_metrics"]
  assert (summary["test_accuracy"], summary["test_loss"]) == (
      expected["test_accuracy"], expected["test_loss"])


def snapshot(folder):
  """{path relative to `folder`: bytes} of every file below it, and every
  folder (as None): equal snapshots, an untouched tree."""
  tree = {}
  for root, subfolders, files in os.walk(folder):
    for name in subfolders:
      tree[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        tree[os.path.relpath(path, folder)] = f.read()
  return tree


def assert_one_line_error(result, *named):
  """launch.py failed with exit status 1 and one line on stderr, 'error:
  ...' naming each of `named`, without a traceback."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for part in named:
    assert part in lines[0], (part, lines[0])
