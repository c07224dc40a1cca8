"""Device meshes for data parallelism, alone or with sweep members.

A mesh has two named axes: 'members' (sweep members, cnn_jax/sweeps/sweep.py) and
'data' (the batch). A single run uses a mesh of shape (1, n): each global
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
                     f"divide the {count} devices")
  return jax.sharding.Mesh(
      devices.reshape(member_devices, count // member_devices), (MEMBERS, DATA))


def replicated(mesh):
  """The same full array on every device (parameters of a single run)."""
  return jax.sharding.NamedSharding(mesh, P())


def batch_sharding(mesh, stacked=False):
  """Batches [B, ...] split along 'data'; stacked=True: sweep batches
  [K, B, ...] with K split along 'members' and B along 'data'."""
  spec = P(MEMBERS, DATA) if stacked else P(DATA)
  return jax.sharding.NamedSharding(mesh, spec)


def member_sharding(mesh):
  """Per-member arrays [K, ...] (stacked states, hyperparameters, metrics)
  split along 'members', replicated along 'data'."""
  return jax.sharding.NamedSharding(mesh, P(MEMBERS))


def check_divisible(mesh, batch_size, members=None,
                    batch_key="config.data.batch_size"):
  """Errors naming the config key when a batch (or the sweep's members per
  chunk) does not split evenly over the mesh."""
  if batch_size % mesh.shape[DATA]:
    raise ValueError(f"{batch_key}={batch_size} does not split evenly over "
                     f"the {mesh.shape[DATA]} devices of the 'data' axis")
  if members is not None and members % mesh.shape[MEMBERS]:
    raise ValueError(
        f"{members} members per chunk (config.sweep.chunk) do not split "
        f"evenly over the {mesh.shape[MEMBERS]} devices of the 'members' "
        "axis (config.sweep.member_devices)")


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
