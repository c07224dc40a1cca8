"""experiments/bench_gpu.py: its ratios are against the faster PyTorch mode
at the same batch, and its smoke run (tiny sizes, any device) ends in the
JSON line with every mode's figure."""

import importlib.util
import json
import subprocess
import sys

import pytest

from experiments import bench_gpu
from tests.conftest import REPO


def test_the_ratio_is_against_the_faster_torch_mode():
  results = {"jax bf16": (9.0, 8.0, 10.0), "jax bf16 (batch 512)": (12.0,) * 3,
             "torch eager": (5.0, 4.0, 6.0), "torch compile": (7.5,) * 3}
  assert bench_gpu.fastest_torch(results) == ("torch compile", 7.5)
  assert bench_gpu.fastest_torch({"jax bf16": (9.0,) * 3}) == (None, None)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch not installed")
def test_smoke_run_reports_each_mode_and_the_larger_batch():
  result = subprocess.run(
      [sys.executable, "experiments/bench_gpu.py", "--smoke",
       "--models", "resnet18_cifar", "--torch_modes", "eager"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  headline = json.loads(result.stdout.strip().splitlines()[-1])
  assert headline["smoke"] and headline["resnet18_cifar_batch"] == 4
  assert headline["resnet18_cifar_fastest_torch"] == "torch eager"
  assert headline["resnet18_cifar_ratio"] == pytest.approx(
      headline["resnet18_cifar_jax_img_s"]
      / headline["resnet18_cifar_torch_eager_img_s"], abs=0.02)
  assert "resnet50_jax_img_s" not in headline  # --models left it out
