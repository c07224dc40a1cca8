"""experiments/bench_tta.py's PyTorch twin follows cnn_jax's recipe: the
one-cycle schedule, the config's values, the network's size."""

import importlib.util
import os

import numpy as np
import optax
import pytest

from cnn_jax.training import optim
from configs import mnist_fast
from experiments import bench_tta
from tests.conftest import REPO


def test_onecycle_is_cnn_jax_schedule():
  config = mnist_fast.get_config()
  steps_per_epoch = 234
  total = config.train.num_epochs * steps_per_epoch
  schedule = optim.make_schedule(config.optim, total, steps_per_epoch)
  pct = round(config.optim.warmup_epochs * steps_per_epoch) / total
  for step in (0, 1, 70, 139, 140, 141, 500, total - 1, total):
    np.testing.assert_allclose(
        bench_tta.onecycle(step, total, config.optim.learning_rate, pct),
        float(schedule(step)), rtol=1e-5, atol=1e-10)
  # and optax's schedule is what cnn_jax's is, scaled by the peak
  np.testing.assert_allclose(
      float(schedule(300)), config.optim.learning_rate * float(
          optax.cosine_onecycle_schedule(total, 1.0, pct)(300)), rtol=1e-6)


def test_same_recipe_is_read_from_the_config():
  recipe = bench_tta.torch_recipe(
      "same", os.path.join(REPO, "configs", "mnist_fast.py"), 0)
  config = mnist_fast.get_config()
  assert (recipe["batch"], recipe["epochs"], recipe["lr"],
          recipe["label_smoothing"], recipe["warmup_epochs"]) == (
              config.data.batch_size, config.train.num_epochs,
              config.optim.learning_rate, config.train.label_smoothing,
              config.optim.warmup_epochs)
  # It evaluates in the recipe's test batches (time counts).
  assert recipe["eval_batch"] == config.data.eval_batch_size == 250
  # float32 convolutions here; configs/mnist_tta.py multiplies them in
  # bfloat16, which the twin does under torch.autocast.
  assert not recipe["bfloat16"]
  assert bench_tta.torch_recipe(
      "same", os.path.join(REPO, "configs", "mnist_tta.py"), 0)["bfloat16"]
  # --epochs (as --quick sets it) overrides the config's.
  assert bench_tta.torch_recipe(
      "same", os.path.join(REPO, "configs", "mnist_fast.py"), 2)["epochs"] == 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch not installed")
def test_twin_has_the_network_size():
  model = bench_tta.torch_model({"batchnorm": False, "dropout": 0.0},
                                flax_init=True)
  assert sum(p.numel() for p in model.parameters()) == 824_458


def test_pace_and_first_reaching_read_the_curve():
  # (epoch, test accuracy, seconds since the process started)
  curve = [(1, 0.990, 12.0), (2, 0.9941, 17.5), (3, 0.9938, 22.0),
           (4, 0.9952, 28.0)]
  # Start-up and the first epoch (compiles) are not the pace.
  assert bench_tta.epoch_seconds(curve) == pytest.approx(16.0 / 3)
  assert bench_tta.epoch_seconds(curve[:1]) is None
  assert bench_tta.first_reaching(curve, 0.994) == 17.5
  assert bench_tta.first_reaching(curve, 0.995) == 28.0
  assert bench_tta.first_reaching(curve, 0.996) is None
  assert bench_tta.ratio(36.7, 55.7) == 0.66
  assert bench_tta.ratio(None, 55.7) is None and bench_tta.ratio(1.0, None) is None


def _fake_nvidia_smi(tmp_path, monkeypatch, names):
  """An nvidia-smi on PATH that prints `names` as its CSV query would."""
  script = tmp_path / "nvidia-smi"
  script.write_text("#!/bin/sh\n" + "".join(f"echo '{n}'\n" for n in names))
  script.chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_rows_name_the_gpu_and_its_host(tmp_path, monkeypatch):
  from experiments import machine
  _fake_nvidia_smi(tmp_path, monkeypatch, ["NVIDIA H200"])
  assert machine.gpu_description() == "NVIDIA H200"
  described = machine.description()
  assert described.startswith("NVIDIA H200; host ")
  assert described.endswith(machine.cpu_description())


def test_rows_name_the_cpu_alone_without_a_gpu(tmp_path, monkeypatch):
  from experiments import machine
  monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi to be found
  assert machine.gpu_description() is None
  _fake_nvidia_smi(tmp_path, monkeypatch, [])  # a driver that lists none
  assert machine.gpu_description() is None
  assert machine.description() == machine.cpu_description()
