"""launch.py as a user runs it: overrides and outputs. Its errors (one line
on stderr, exit status 1 or 2): tests/test_faults.py."""

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
