"""config.train.matmul_precision (training/matmul_precision.py)."""

import chex
import jax
import numpy as np
import pytest

from cnn_jax.conv import onednn_bfloat16
from cnn_jax.runs import checkpoint
from cnn_jax.training import matmul_precision
from cnn_jax.training import preemption
from cnn_jax.training import train
from tests import tiny_run


@pytest.mark.parametrize("bad", ["bf16", "high", None])
def test_a_bad_setting_is_one_line_naming_the_key(bad, tiny_run_data,
                                                  tmp_path):
  config = tiny_run.config(tiny_run_data, {"train.matmul_precision": bad})
  with pytest.raises(ValueError, match=r"^config\.train\.matmul_precision="):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written


def test_scope_sets_jax_precision_around_the_run_only():
  seen = []

  @matmul_precision.applied
  def run(config, extra):
    seen.append((jax.config.jax_default_matmul_precision, extra))
    return "done"

  before = jax.config.jax_default_matmul_precision
  config = tiny_run.config("unused", {"train.matmul_precision": "bfloat16"})
  assert run(config, extra=1) == "done"
  config.train.matmul_precision = ""
  with jax.default_matmul_precision("float32"):
    run(config, extra=2)  # '': JAX's own setting, left as it is
  del config.train["matmul_precision"]
  run(config, extra=3)  # configs without the key behave as ''
  assert seen == [("bfloat16", 1), ("float32", 2), (before, 3)]
  assert jax.config.jax_default_matmul_precision == before


def test_the_run_says_what_bfloat16_does_on_this_cpu(capsys):
  @matmul_precision.applied
  def run(config):
    del config

  run(tiny_run.config("unused", {"train.matmul_precision": "bfloat16"}))
  line = capsys.readouterr().out.strip()
  if onednn_bfloat16.bfloat16_native():
    assert line.startswith("matmul precision bfloat16: convolutions and "
                           "dense layers multiply in bfloat16 on oneDNN "
                           "(avx512_core"), line
  else:  # an AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2
    assert "no bf16 instructions; convolutions stay float32" in line, line
  run(tiny_run.config("unused"))  # '' (the default): nothing to say
  assert not capsys.readouterr().out


@pytest.fixture(scope="module", name="runs")
def _runs(tiny_run_data, tmp_path_factory):
  """The tiny run trained in float32 ('') and with 'bfloat16': workdirs and
  summaries."""
  runs = {}
  for setting in ("", "bfloat16"):
    workdir = tmp_path_factory.mktemp(setting or "float32") / "run"
    summary = train.train_and_evaluate(
        tiny_run.config(tiny_run_data, {"train.matmul_precision": setting}),
        str(workdir))
    runs[setting] = workdir, summary
  return runs


def test_a_bfloat16_run_trains_and_differs_only_where_the_cpu_has_bf16(runs):
  """Both learn; their parameters differ by bfloat16's rounding where
  oneDNN has bf16 instructions, and are bitwise equal where it has not."""
  finals = {}
  for setting, (workdir, summary) in runs.items():
    assert summary["test_accuracy"] >= 0.9, (setting, summary)
    state = checkpoint.restore_variables(workdir / "checkpoints")
    finals[setting] = jax.tree.leaves(state["params"])
  differences = [float(np.abs(a - b).max())
                 for a, b in zip(finals[""], finals["bfloat16"])]
  if onednn_bfloat16.bfloat16_native():
    assert max(differences) > 1e-6, differences
    # Rounding, not another training: within a few percent of the weights.
    scale = max(float(np.abs(a).max()) for a in finals[""])
    assert max(differences) < 0.1 * scale, differences
  else:
    assert max(differences) == 0.0, differences


def test_a_stopped_bfloat16_run_resumes_bitwise(runs, tiny_run_data,
                                                 tmp_path):
  """Stopped after 5 steps (mid log window, after the step-4 checkpoint)
  and resumed: the same checkpoints and metrics as the run never stopped."""
  overrides = {"train.matmul_precision": "bfloat16"}
  workdir = tmp_path / "run"
  stopping = tiny_run.config(tiny_run_data,
                             {**overrides, "train.stop_after_steps": 5})
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(stopping, str(workdir))
  config = tiny_run.config(tiny_run_data, overrides)
  train.train_and_evaluate(config, str(workdir))
  uninterrupted = runs["bfloat16"][0]
  chex.assert_trees_all_equal(tiny_run.arrays(workdir, 8, config),
                              tiny_run.arrays(uninterrupted, 8, config))
  tiny_run.assert_same_run(workdir, uninterrupted, config)
