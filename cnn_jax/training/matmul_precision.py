"""config.train.matmul_precision: the precision a run's convolutions and dense
layers (and, off the CPU, all matrix multiplies) multiply float32 values in.

Why: on CPUs with bf16 dot-product instructions (AVX-512-BF16: AMD Zen 4/5,
Intel Cooper Lake; AMX: Sapphire Rapids and later) oneDNN's bfloat16
convolutions run 1.9-4x its float32 ones, and a small CNN's train step
is mostly convolutions. Computing a whole model in bfloat16
(config.model.dtype) does not get there on the CPU: XLA:CPU computes
bfloat16 elementwise work (bias, ReLU, pooling, BatchNorm) in float32 with
conversions around every op, which made the MNIST CNN 0.72x its float32
step. 'bfloat16' here instead keeps parameters, activations and everything
elementwise in float32 and rounds only the operands of the convolutions
(conv/onednn.py) and of the large dense layers (conv/onednn_dense.py) to
bfloat16, with float32 sums: JAX's own meaning of
`jax.default_matmul_precision('bfloat16')`, the TPU's default.

  ''              JAX's setting (jax_default_matmul_precision, e.g. from the
                  environment variable JAX_DEFAULT_MATMUL_PRECISION); unset:
                  XLA's default, full float32 on the CPU.
  'float32'       full float32 everywhere.
  'tensorfloat32' TF32 on GPUs that have it; float32 on the CPU.
  'bfloat16'      bfloat16 operands, float32 sums: oneDNN's convolutions and
                  matmuls on CPUs with bf16 instructions (elsewhere on the CPU, float32:
                  never a slower path), XLA's on GPU/TPU.

Applied around the whole run (training, evaluation, sweeps and searches
alike) as a JAX config context: it is part of every jitted program's cache
key, so each program is compiled with the precision it runs at.
"""

import contextlib
import functools

import jax

from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.runs import writers

SETTINGS = ("", "float32", "tensorfloat32", "bfloat16")


def setting_of(config) -> str:
  """config.train.matmul_precision (absent: ''), or a ValueError naming the
  key if it is not one of SETTINGS."""
  setting = config.get("train", {}).get("matmul_precision", "")
  if setting not in SETTINGS:
    raise ValueError(
        f"config.train.matmul_precision={setting!r} is not one of: "
        f"{', '.join(repr(s) for s in SETTINGS)}")
  return setting


def context(setting):
  """A context in which JAX traces with `setting` ('' or None: JAX's own
  setting, left as it is)."""
  if not setting:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(setting)


def describe(setting: str) -> str:
  """One line on what `setting` does on this machine, for the run's log
  ('' when it changes nothing worth saying)."""
  if setting != "bfloat16" or jax.default_backend() != "cpu":
    return ""
  if not onednn_build.available():
    return ("matmul precision bfloat16: no oneDNN here "
            f"({onednn_build.unavailable_reason()}); convolutions stay "
            "float32")
  if onednn_bfloat16.bfloat16_native():
    return ("matmul precision bfloat16: convolutions and dense layers "
            f"multiply in bfloat16 on oneDNN ({onednn_build.cpu_isa()})")
  return (f"matmul precision bfloat16: this CPU ({onednn_build.cpu_isa()}) "
          "has no bf16 instructions; convolutions stay float32")


def applied(run_fn):
  """`run_fn(config, ...)` traced with config.train.matmul_precision, after
  a line saying what the setting does here: for the functions that run a
  config (train_and_evaluate, evaluate_checkpoint)."""

  @functools.wraps(run_fn)
  def run(config, *args, **kwargs):
    setting = setting_of(config)
    with context(setting):
      line = describe(setting)
      if line:
        writers.report(line)
      return run_fn(config, *args, **kwargs)

  return run
