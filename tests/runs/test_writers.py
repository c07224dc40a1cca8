"""runs/writers.py: TensorBoard event files without PyTorch's import cost."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Writes one record through MetricWriter (metrics.jsonl and TensorBoard),
# then says whether torch was imported on the way.
_WRITE = """
import os, sys
from cnn_jax.runs import writers
writer = writers.MetricWriter(sys.argv[1])
writer.write(1, "train", {"loss": 0.5})
writer.close()
print("torch imported:", "torch" in sys.modules)
print("event files:", len(os.listdir(os.path.join(sys.argv[1], "tensorboard"))))
import torch
print("torch importable:", hasattr(torch, "Tensor"))
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch not installed: nothing to keep out")
def test_metric_writer_leaves_torch_unimported(tmp_path):
  # tensorboardX imports torch when it can (2.5 s of a run's start).
  result = subprocess.run(
      [sys.executable, "-c", _WRITE, str(tmp_path)], cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "torch imported: False" in result.stdout
  assert "event files: 1" in result.stdout
  # Hidden only while tensorboardX loads: importable afterwards.
  assert "torch importable: True" in result.stdout
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
