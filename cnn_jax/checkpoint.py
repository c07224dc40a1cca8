"""Checkpoints of the training state. The only module that imports orbax.

A checkpoint of step N is a folder `<workdir>/checkpoints/N` with two items:
'state' (the TrainState's arrays: step, params, batch_stats, opt_state, rng)
and 'meta' (JSON: data-iterator position and the resolved config). Orbax
writes each step to a temporary folder and renames it when complete, so a
killed save never looks like a finished checkpoint.
"""

import os

import jax
import orbax.checkpoint as ocp


def _state_arrays(state):
  """The array part of a TrainState (apply_fn and tx are code, not data)."""
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "rng": jax.random.key_data(state.rng)
                 if jax.dtypes.issubdtype(state.rng.dtype,
                                          jax.dtypes.prng_key)
                 else state.rng}


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir, max_to_keep=3):
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "meta"))


def save(manager, state, meta):
  """Saves `state` at its own step with JSON-able `meta`; waits until done."""
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_state_arrays(state)),
      meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  return step


def restore(manager, template_state, step=None):
  """Restores (state, meta) at `step` (default: latest) into the structure of
  `template_state` (whose apply_fn/tx are kept)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint in {manager.directory}")
  template = _state_arrays(template_state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      meta=ocp.args.JsonRestore()))
  arrays = restored["state"]
  rng = arrays["rng"]
  if jax.dtypes.issubdtype(template_state.rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  state = template_state.replace(
      step=arrays["step"], params=arrays["params"],
      batch_stats=arrays["batch_stats"], opt_state=arrays["opt_state"],
      rng=rng)
  return state, restored["meta"]
