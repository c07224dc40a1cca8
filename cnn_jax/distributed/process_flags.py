"""The command-line flags that start jax.distributed, shared by launch.py
and `python -m cnn_jax.distributed --check` (the same flags must mean the
same in both: a user tests a cluster with the command they will train with).
"""

from absl import flags

from cnn_jax.distributed import multihost


def define_flags():
  """Defines --distributed, --coordinator_address, --num_processes,
  --process_id and --distributed_timeout (called once, by the entry point)."""
  flags.DEFINE_bool("distributed", False, "Start jax.distributed with the "
                    "cluster auto-detected (SLURM, Open MPI, TPU pods): run "
                    "the same command in every process.")
  flags.DEFINE_string("coordinator_address", None, "With --num_processes and "
                      "--process_id: jax.distributed by hand; host:port of "
                      "process 0 (e.g. localhost:12345).")
  flags.DEFINE_integer("num_processes", None, "How many processes in all.")
  flags.DEFINE_integer("process_id", None, "This process, 0 .. N-1.")
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for "
                       "every process to join jax.distributed.")


def asked(values):
  """Whether the parsed flags ask for several processes."""
  return values.distributed or values.coordinator_address is not None


def initialize(values):
  """multihost.initialize from the parsed flags (raises RuntimeError or
  ValueError with one line, as it does)."""
  multihost.initialize(values.coordinator_address, values.num_processes,
                       values.process_id, values.distributed_timeout)
