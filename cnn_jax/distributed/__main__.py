"""python -m cnn_jax.distributed --check: is this cluster set up?

Run the same command in every process (as launch.py would be run), e.g.
  srun python -m cnn_jax.distributed --check --distributed
  python -m cnn_jax.distributed --check --coordinator_address=localhost:12345 \
      --num_processes=2 --process_id=0     (and =1 in a second shell)
Each process prints itself, its devices and the sum over all devices of
(global device index + 1), computed by an all-reduce across every process:
device_count * (device_count + 1) / 2 when the collectives work.
"""

import sys

from absl import app
from absl import flags
import jax
import numpy as np

from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.distributed import multihost
from cnn_jax.distributed import process_flags

flags.DEFINE_bool("check", False, "Run the check (required).")
process_flags.define_flags()
FLAGS = flags.FLAGS


def all_reduce_check():
  """(sum over devices of device index + 1, the expected value)."""
  mesh = mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  count = jax.device_count()
  # This process's devices' rows of [1, 2, ..., count].
  local = np.arange(count, dtype=np.float32)[
      multihost.process_rows(count)] + 1
  values = multihost.global_array(local, sharding)
  total = jax.jit(jnp_sum, out_shardings=mesh_lib.replicated(mesh))(values)
  return float(np.asarray(total)), count * (count + 1) / 2


def jnp_sum(x):
  return x.sum()


def main(argv):
  del argv
  if not FLAGS.check:
    print("usage: python -m cnn_jax.distributed --check [--distributed | "
          "--coordinator_address=H:P --num_processes=N --process_id=I]",
          file=sys.stderr)
    return 2
  if process_flags.asked(FLAGS):
    try:
      process_flags.initialize(FLAGS)
    except (RuntimeError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  print(f"{multihost.describe()}; local devices: "
        f"{', '.join(str(d) for d in jax.local_devices())}", flush=True)
  total, expected = all_reduce_check()
  verdict = "ok" if total == expected else "WRONG"
  print(f"process {jax.process_index()}: all-reduce over "
        f"{jax.device_count()} devices = {total:g} (expected "
        f"{expected:g}): {verdict}", flush=True)
  return 0 if total == expected else 1


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
