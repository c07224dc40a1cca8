"""launch.py as a user runs it: overrides, outputs, and one-line errors."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _launch(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"),
       "--config", os.path.join(REPO, "configs", "mnist.py"), *args],
      capture_output=True, text=True, cwd=REPO, timeout=600, check=False)


def test_tiny_run_end_to_end_with_overrides(tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  result = _launch(f"--workdir={workdir}",
                   f"--config.data.data_dir={tiny_mnist_dir}",
                   "--config.train.num_epochs=1",
                   "--config.data.batch_size=64",
                   "--config.optim.learning_rate=0.002")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 256 // 64
  assert summary["config"]["optim"]["learning_rate"] == 0.002
  assert summary["test_examples"] == 100
  assert "test accuracy" in result.stdout

  # Same workdir again: refused with one clear line, exit status 1.
  again = _launch(f"--workdir={workdir}",
                  f"--config.data.data_dir={tiny_mnist_dir}")
  assert again.returncode == 1
  assert "already holds a run" in again.stderr
  assert "Traceback" not in again.stderr


def test_misspelt_config_key_is_an_error(tmp_path):
  result = _launch(f"--workdir={tmp_path}", "--config.optim.learnig_rate=0.1")
  assert result.returncode != 0
  assert "learnig_rate" in result.stderr


def test_wrong_value_type_is_an_error(tmp_path):
  result = _launch(f"--workdir={tmp_path}", "--config.train.num_epochs=many")
  assert result.returncode != 0
  assert "num_epochs" in result.stderr


def test_missing_data_directory_is_named(tmp_path):
  result = _launch(f"--workdir={tmp_path / 'run'}",
                   f"--config.data.data_dir={tmp_path / 'nowhere'}")
  assert result.returncode == 1
  assert "nowhere" in result.stderr and "Traceback" not in result.stderr
