"""Device meshes for data parallelism, alone or with sweep members.

A mesh has two named axes: 'members' (sweep members, cnn_jax/sweeps/sweep.py)
and 'data' (the batch). A single run uses a mesh of shape (1, n) over every
device of every process (config.mesh.data_devices, run_mesh): each global
batch [B, ...] is split over the n devices along 'data', and parameters and
optimizer state are replicated, so `jax.jit` with these shardings runs the
same step data-parallel (XLA inserts the gradient all-reduce). A sweep's
stacked state [K, ...] is split over 'members' and its batch [K, B, ...]
over both axes.

Meshes are built on call, never at import (no global device state).
"""

import jax
import numpy as np

MEMBERS = "members"
DATA = "data"

P = jax.sharding.PartitionSpec


def make_mesh(member_devices=1, devices=None):
  """A ('members', 'data') mesh over `devices` (default: all of them).

  Args:
    member_devices: devices along 'members'; the rest of the factor goes to
      'data' (member_devices=1: pure data parallelism).
    devices: the devices to use, in order.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  count = devices.size
  if member_devices < 1 or count % member_devices:
    raise ValueError(f"config.sweep.member_devices={member_devices} does not "
                     f"divide the {count} devices{_over_processes()}")
  return jax.sharding.Mesh(
      devices.reshape(member_devices, count // member_devices), (MEMBERS, DATA))


def run_mesh(config):
  """The ('members', 'data') mesh of a single run: (1, n) over the devices
  config.mesh.data_devices names (-1, or a config without a `mesh` section:
  all of them, over all processes; n > 0: the first n, one process only).
  """
  mesh_config = config.get("mesh") or {}
  count = mesh_config.get("data_devices", -1)
  devices = jax.devices()
  if count == -1 or count == len(devices):
    return make_mesh(1, devices)
  if isinstance(count, bool) or not isinstance(count, int) or not (
      0 < count <= len(devices)):
    raise ValueError(f"config.mesh.data_devices={count!r} must be -1 (all "
                     f"{len(devices)} devices) or a count from 1 to "
                     f"{len(devices)}")
  if jax.process_count() > 1:
    raise ValueError(f"config.mesh.data_devices={count} with "
                     f"{jax.process_count()} processes: a multi-process run "
                     f"uses all {len(devices)} devices (-1)")
  return make_mesh(1, devices[:count])


def replicated(mesh):
  """The same full array on every device (parameters of a single run)."""
  return jax.sharding.NamedSharding(mesh, P())


def batch_sharding(mesh, stacked=False, steps_axis=False):
  """Batches [B, ...] split along 'data'; stacked=True: sweep batches
  [K, B, ...] with K split along 'members' and B along 'data';
  steps_axis=True: a call's batches [N, B, ...] (train.steps_per_call > 1)
  with B split along 'data'."""
  spec = P(MEMBERS, DATA) if stacked else P(DATA)
  if steps_axis:
    spec = P(None, *spec)
  return jax.sharding.NamedSharding(mesh, spec)


def member_sharding(mesh):
  """Per-member arrays [K, ...] (stacked states, hyperparameters, metrics)
  split along 'members', replicated along 'data'."""
  return jax.sharding.NamedSharding(mesh, P(MEMBERS))


def _over_processes():
  """' (P processes x D devices)' in messages of a multi-process run."""
  count, local = jax.process_count(), jax.local_device_count()
  return (f" ({count} processes x {local} device{'s' * (local != 1)})"
          if count > 1 else "")


def check_divisible(mesh, batch_size, members=None,
                    batch_key="config.data.batch_size",
                    members_key="config.sweep.chunk"):
  """Errors naming the config key when a batch (or the sweep's members per
  chunk, a search's slots) does not split evenly over the mesh."""
  if batch_size % mesh.shape[DATA]:
    raise ValueError(f"{batch_key}={batch_size} does not split evenly over "
                     f"the {mesh.shape[DATA]} devices of the 'data' axis "
                     f"of the {mesh.devices.size} devices{_over_processes()}")
  if members is not None and members % mesh.shape[MEMBERS]:
    raise ValueError(
        f"{members} members per program ({members_key}) do not split "
        f"evenly over the {mesh.shape[MEMBERS]} devices of the 'members' "
        f"axis (config.sweep.member_devices) of the {mesh.devices.size} "
        f"devices{_over_processes()}")


def data_parallel(step, mesh, donate_state=True):
  """`step(state, batch) -> (state, metrics)` (e.g. train.train_step with
  its keyword arguments bound) jitted to run data-parallel on `mesh`: state
  replicated, batch split along 'data'.

  The result equals the single-device step on the same global batch up to
  float summation order (batch means become all-reduced partial sums).
  """
  rep = replicated(mesh)
  return jax.jit(step, in_shardings=(rep, batch_sharding(mesh)),
                 out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate_state else ())
