"""Resuming a search after a kill: the stacked state of the K slots and the
search's host state, checkpointed at epoch ends through
cnn_jax/runs/checkpoint.py (Orbax stays there).

A search checkpoint `<workdir>/checkpoints/<step>` holds the slots' stacked
TrainState (its 'step' item is the search's global step; each slot's own
step is in meta) and, in its JSON meta, everything the host decides with:
the trial table and lineage, which trial each slot holds, each slot's data
iterator (seed and batches drawn), successive halving's rung results, PBT's
random-generator state, the kept trials' ids, and the config (a resumed
search must be the same search). The final states of the kept trials (the
best finished ones, tested at the end) are run folders of their own,
`<workdir>/kept/<trial>/checkpoints`; a folder of a trial no longer kept
is removed only after a search checkpoint that no longer names it.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.distributed import multihost
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.sweeps import sweep_steps

_OPTIONS = ml_collections.ConfigDict(
    {"every_steps": 0, "every_seconds": 0.0, "keep": 2,
     "keep_best_metric": "", "async_save": False})


def _kept_dir(workdir, trial_id):
  return os.path.join(workdir, "kept", str(trial_id))


def can_resume(workdir):
  return bool(checkpoint.saved_steps(workdir))


def save(workdir, states, step, meta, kept_ids):
  """Saves the stacked `states` at global `step` with the host `meta`, then
  removes the kept/ folders of trials no longer kept. Every process calls
  it (each writes its slots' shards); process 0 removes the folders."""
  manager = checkpoint.make_manager(workdir, _OPTIONS)
  member_steps = multihost.to_host(states.step).tolist()
  # A host scalar: Orbax writes it from process 0 (a one-device jax.Array
  # would be a different array in each process).
  checkpoint.save(manager, states.replace(step=np.asarray(step, np.int32)),
                  {**meta, "member_steps": member_steps})
  manager.wait_until_finished()
  manager.close()
  folder = os.path.join(workdir, "kept")
  if multihost.is_main() and os.path.isdir(folder):
    for name in os.listdir(folder):
      if name.isdigit() and int(name) not in kept_ids:
        shutil.rmtree(os.path.join(folder, name))


def restore(workdir, states, config_dict, sharding=None):
  """(states, meta) of the newest intact search checkpoint; `states` gives
  the shapes, `sharding` where they go (checkpoint.restore; e.g. replicated
  over the search's mesh). Raises ValueError if it was saved by another
  config."""

  def same_search(meta):
    # Keys that decide only logging, saving and stopping may change
    # (train.stop_after_steps: a relaunch without it continues).
    saved = meta.get("config") or {}
    if workdirs.config_differences(saved, config_dict) or (
        saved.get("train", {}).get("num_epochs")
        != config_dict["train"]["num_epochs"]):
      raise ValueError(
          f"{workdir!r} holds a search checkpoint of another config; "
          "rerun with the same config to resume, or choose a new --workdir")

  if multihost.is_main():
    checkpoint.remove_unfinished(workdir)
  multihost.barrier("unfinished search checkpoints removed")
  manager = checkpoint.make_manager(workdir)
  like = states.replace(step=jnp.zeros((), jnp.int32))  # shapes only
  restored, meta = checkpoint.restore_latest(manager, like, same_search,
                                             sharding)
  manager.close()
  restored = restored.replace(
      step=jnp.asarray(meta["member_steps"], jnp.int32))
  return restored, meta


def save_kept(workdir, trial_id, state, meta):
  """Writes a kept trial's final state (an ordinary TrainState) to
  kept/<trial>/; a stale folder of the same trial (from before a kill) is
  replaced."""
  folder = _kept_dir(workdir, trial_id)
  if multihost.is_main():
    if os.path.exists(folder):
      shutil.rmtree(folder)
    with workdirs.writing(workdir):
      os.makedirs(folder)
  multihost.barrier(f"kept/{trial_id} made")
  manager = checkpoint.make_manager(folder, _OPTIONS)
  checkpoint.save(manager, state, meta)
  manager.wait_until_finished()
  manager.close()


def restore_kept(workdir, trial_ids, states, sharding=None):
  """{trial id: host copy of its kept final state}; `states` (stacked)
  gives the shapes, `sharding` where they are read to (every process
  needs them whole: replicated)."""
  like = sweep_steps.member_state(states, 0)  # shapes only
  kept = {}
  for trial_id in trial_ids:
    manager = checkpoint.make_manager(_kept_dir(workdir, trial_id))
    state, _ = checkpoint.restore_latest(manager, like, sharding=sharding)
    manager.close()
    kept[trial_id] = jax.device_get(state)
  return kept
