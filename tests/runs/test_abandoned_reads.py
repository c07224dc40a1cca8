"""runs/abandoned_reads.py: after a damaged checkpoint's restore fails,
nothing Orbax abandoned prints anything (launch.py's error stays one line)."""

import asyncio
import os
import subprocess
import sys
import types

from cnn_jax.runs import abandoned_reads
from tests.conftest import REPO


_DAMAGED_RESTORES = r"""
import glob, os, sys, time
import jax, jax.numpy as jnp, optax
from cnn_jax.runs import checkpoint
from cnn_jax.training.train_state import TrainState

def state():
  # Thirty arrays: many reads in flight when one fails.
  params = {f"w{i}": jnp.full((64, 64 + i), float(i)) for i in range(30)}
  tx = optax.sgd(0.1)
  return TrainState(step=jnp.asarray(1, jnp.int32), params=params,
                    batch_stats={}, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(0), apply_fn=None, tx=tx)

workdir = sys.argv[1]
manager = checkpoint.make_manager(workdir)
checkpoint.save(manager, state(), {"step": 1})
manager.wait_until_finished()
files = glob.glob(os.path.join(checkpoint.checkpoint_dir(workdir), "1", "state",
                               "**", "d", "*"), recursive=True)
largest = max(files, key=os.path.getsize)
with open(largest, "r+b") as f:
  f.truncate(os.path.getsize(largest) // 2)
for _ in range(8):
  try:
    checkpoint.restore(manager, jax.eval_shape(state), 1)
  except checkpoint.CheckpointError:
    pass
time.sleep(1.0)  # reads still in flight finish (and used to print) now
print("failed 8 restores")
"""


def test_abandoned_reads_of_a_damaged_checkpoint_print_nothing(tmp_path):
  # When one array fails to read, Orbax abandons the others' reads and
  # closes its event loop; the abandoned coroutines and each TensorStore
  # read still in flight used to print a traceback ("Event loop is closed")
  # at some later moment, mid-way through launch.py's one-line error.
  result = subprocess.run(
      [sys.executable, "-c", _DAMAGED_RESTORES, str(tmp_path / "run")],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "failed 8 restores" in result.stdout
  for noise in ("Traceback", "Event loop is closed", "never retrieved",
                "never awaited"):
    assert noise not in result.stderr, result.stderr[-3000:]


def test_other_unraisable_errors_still_reach_the_previous_hook(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  abandoned_reads.quiet("/nowhere")
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    late = e
  other = RuntimeError("Event loop is closed")  # raised by no loop
  for exc in (late, other):
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
        err_msg=None, object=None))
  assert [u.exc_value for u in seen] == [other]
