"""What makes a checkpoint trustworthy, apart from Orbax (runs/checkpoint.py):
a train state is saved only when every array is finite, with a CRC-32 of
each array in its meta, and the arrays read back must match those checksums
(a truncated file or a flipped bit shows)."""

import zlib

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or damaged."""


def host_leaves(arrays):
  """Host (numpy) copies of the leaves of `arrays`, in tree order. An array
  split over the devices of several processes (a sweep's stacked state) is
  gathered whole in each of them (every process calls save alike; the rule
  of distributed/multihost.to_host, which runs/ may not import)."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and (
        not x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return [fetch(x) for x in jax.tree.leaves(arrays)]


def all_finite(leaves):
  return all(np.isfinite(x).all() for x in leaves
             if jnp.issubdtype(x.dtype, jnp.inexact))


def checksums(leaves):
  """CRC-32 of each array's bytes: any truncated or flipped bit shows."""
  return [zlib.crc32(np.ascontiguousarray(x).view(np.uint8)) for x in leaves]


def verify(arrays, meta, step):
  """Raises CheckpointError if `arrays` differ from the checksums saved."""
  expected = meta.get("checksums")
  if expected is None:  # saved before checksums existed
    return
  saved_now = checksums(host_leaves(arrays))
  paths = [jax.tree_util.keystr(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(arrays)[0]]
  if len(expected) != len(paths):
    raise CheckpointError(f"checkpoint step {step}: {len(paths)} arrays "
                          f"where {len(expected)} were saved")
  for path, saved, now in zip(paths, expected, saved_now):
    if saved != now:
      raise CheckpointError(f"checkpoint step {step}: array {path} does not "
                            "match the checksum saved with it (damaged file)")
