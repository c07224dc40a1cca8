"""Many processes (hosts) in one run: jax.distributed set-up, each process's
slice of a global batch, global arrays from those slices, and the few values
the processes must agree on.

Every process runs the same program on the same global arrays (SPMD): a
global batch [B, ...] is split over all devices of all processes along the
mesh's 'data' axis, and process p holds rows [p*B/P, (p+1)*B/P) of it (its
devices come after those of processes 0..p-1 in jax.devices(), so its
shards are contiguous). With one process all of this is the identity.
"""

import jax
from jax.experimental import multihost_utils
import numpy as np

from cnn_jax.distributed import liveness

# A process that stops sending heartbeats (killed, its host lost) makes the
# coordination service stop the others after this long; JAX's default is
# 100 s. Collectives with a dead peer usually fail sooner (connection reset;
# liveness.py then names the lost process well within this time).
HEARTBEAT_TIMEOUT_S = 30


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeout_s=300):
  """jax.distributed.initialize, before any other JAX call.

  All arguments None: the cluster is auto-detected (SLURM, Open MPI, TPU
  pods, ...). Otherwise all three name it: `coordinator_address`
  ('host:port' of process 0), `num_processes`, this `process_id`.
  `timeout_s`: how long to wait for every process to join.
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and any(v is None for v in given):
    raise ValueError("--coordinator_address, --num_processes and "
                     "--process_id go together (or none: auto-detect)")
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=int(timeout_s),
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  except (RuntimeError, ValueError) as e:
    where = (f"coordinator {coordinator_address}, process {process_id} of "
             f"{num_processes}" if coordinator_address else
             "auto-detected cluster")
    raise RuntimeError(f"jax.distributed.initialize failed ({where}): "
                       f"{str(e).splitlines()[0][:300]}") from e
  # Names a lost process when a collective fails (liveness.py).
  liveness.start()


def is_main():
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def process_rows(batch_size, process_index=None, process_count=None):
  """This process's rows of a global batch of `batch_size`: a slice.

  batch_size must be a multiple of the process count (it is, when it
  splits over the devices: every process has as many).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  per_process = batch_size // count
  return slice(index * per_process, (index + 1) * per_process)


def local_block(sharding, shape, what="array"):
  """This process's part of a global array of `shape` split by `sharding`:
  one slice per dimension (the block of its addressable devices' shards,
  what jax.make_array_from_process_local_data takes as the process's data).

  The whole array with one process; process_rows' slice for a batch split
  along a run mesh's 'data' axis; for a sweep's batches [K, B, ...] the
  process's members and rows. Raises ValueError naming `what` when the
  process's shards do not form one block (a mesh that interleaves the
  processes' devices).
  """
  indices = list(sharding.addressable_devices_indices_map(tuple(shape))
                 .values())
  block = []
  for dim, size in enumerate(shape):
    spans = sorted({(index[dim].start or 0,
                     size if index[dim].stop is None else index[dim].stop)
                    for index in indices})
    start, stop = spans[0][0], max(end for _, end in spans)
    if sum(end - begin for begin, end in spans) != stop - start:
      raise ValueError(
          f"{what}: process {jax.process_index()} of {jax.process_count()} "
          f"holds a non-contiguous part of dimension {dim} ({spans}) on its "
          f"{jax.local_device_count()} devices")
    block.append(slice(start, stop))
  return tuple(block)


def put(tree, sharding):
  """Host values that are the same in every process (numpy arrays or
  fetchable arrays) as global arrays split by `sharding`: each process
  places only its devices' shards (no transfer between processes, no check
  that the values agree)."""

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])

  return jax.tree.map(place, jax.device_get(tree))


def global_array(local, sharding):
  """The global array whose rows held by this process are `local` (the
  sharded axis is the process's slice, process_rows): for numpy leaves of a
  pytree; other leaves pass unchanged."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x)
      if isinstance(x, np.ndarray) else x, local)


def to_host(x):
  """A global array as one numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and (
      not x.is_fully_replicated):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def any_process(*flags):
  """For each of `flags`, whether it is True in any process: the same
  answers in all of them (one collective; every process must call it at the
  same point). One flag: a bool; several: a tuple of bools."""
  flags = np.asarray([bool(f) for f in flags])
  if jax.process_count() > 1:
    gathered = multihost_utils.process_allgather(flags)  # [P, len(flags)]
    flags = np.asarray(gathered).reshape(-1, len(flags)).any(axis=0)
  answers = tuple(bool(f) for f in flags)
  return answers[0] if len(answers) == 1 else answers


def barrier(name):
  """Waits until every process reaches the barrier called `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def describe():
  """One line: this process, the process count and the devices."""
  return (f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} "
          f"devices ({jax.devices()[0].platform})")
