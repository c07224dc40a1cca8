"""Checkpoints of the training state. The only module that imports orbax.

A checkpoint of step N is a folder `<workdir>/checkpoints/N` with two items:
'state' (the TrainState's arrays: step, params, batch_stats, opt_state, rng)
and 'meta' (JSON: data-iterator position, the resolved config, and whatever
else the caller needs to resume). Orbax writes each step to a temporary folder
and renames it when complete, so a killed save never looks like a finished
checkpoint. Files damaged afterwards (deleted, truncated, a flipped bit) are
caught on restore: Orbax fails to read them, or the arrays no longer match the
checksums saved with them in 'meta'; `restore_latest` then falls back to the
previous checkpoint. Nothing is unpickled: arrays are stored by TensorStore
(zarr/OCDBT) and everything else is JSON.
"""

import glob
import json
import os
import shutil

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cnn_jax.runs import abandoned_reads
from cnn_jax.runs import checkpoint_integrity as integrity
from cnn_jax.runs import save_policy

_ITEMS = ("state", "meta")
# Test metrics that are better when smaller (for keep_best_metric).
_MINIMIZED = ("loss",)
_BEST_METRICS = ("accuracy", "loss")
# Orbax writes step N into N.orbax-checkpoint-tmp... and renames it when done.
_UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"


# (Defined with the checks that raise it; callers name it here.)
CheckpointError = integrity.CheckpointError


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def saved_steps(workdir):
  """Steps of the complete checkpoints in `workdir`, oldest first."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def remove_unfinished(workdir):
  """Deletes the folders of saves that never completed (a process killed
  while Orbax wrote `<step>.orbax-checkpoint-tmp...`; never read as a
  checkpoint) and returns their names, so the run can save those steps again.
  (Orbax's cleanup_tmp_directories does the same, in the background.)"""
  found = sorted(glob.glob(os.path.join(checkpoint_dir(workdir),
                                        "*" + _UNFINISHED_SUFFIX + "*")))
  for path in found:
    shutil.rmtree(path)
  return [os.path.basename(path) for path in found]


def _check_options(checkpoint_config):
  if checkpoint_config.keep < 1:
    raise ValueError(f"config.checkpoint.keep={checkpoint_config.keep} must be "
                     ">= 1 (resuming needs the latest checkpoint)")
  best = checkpoint_config.keep_best_metric
  if best and best not in _BEST_METRICS:
    raise ValueError(f"config.checkpoint.keep_best_metric={best!r} is not one "
                     f"of: '' (off), {', '.join(_BEST_METRICS)}")


def make_manager(workdir, checkpoint_config=None):
  """An Orbax CheckpointManager for `<workdir>/checkpoints`.

  Args:
    workdir: the run folder.
    checkpoint_config: config.checkpoint (every_steps, every_seconds, keep,
      keep_best_metric, async_save); None: only for restoring (nothing is
      created or deleted).
  """
  directory = checkpoint_dir(workdir)
  if checkpoint_config is None:
    # Not read_only=True: Orbax then warns on every use.
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(directory, options=options, item_names=_ITEMS)
  _check_options(checkpoint_config)
  save_policies = []
  if checkpoint_config.every_steps:
    save_policies.append(
        checkpoint_managers.FixedIntervalPolicy(checkpoint_config.every_steps))
  if checkpoint_config.every_seconds:
    save_policies.append(save_policy.EverySeconds(
        checkpoint_config.every_seconds))
  # The newest `keep` always survive (resuming needs the latest); with
  # keep_best_metric also the best of those saved with test metrics.
  keep_policies = [checkpoint_managers.LatestN(checkpoint_config.keep)]
  best = checkpoint_config.keep_best_metric
  if best:
    keep_policies.append(checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[best], n=1,
        reverse=best in _MINIMIZED, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=checkpoint_managers.AnySavePolicy(save_policies),
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(
          keep_policies),
      enable_async_checkpointing=checkpoint_config.async_save,
      cleanup_tmp_directories=True)  # left by a save that was killed
  return ocp.CheckpointManager(directory, options=options, item_names=_ITEMS)


def _state_arrays(state):
  """The array part of a TrainState (apply_fn and tx are code, not data)."""
  rng = state.rng
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "rng": rng}


def _jsonable(tree):
  """`tree` with numpy/JAX scalars and arrays as Python numbers and lists."""
  return json.loads(json.dumps(tree, default=lambda x: x.tolist()))


def save(manager, state, meta, metrics=None):
  """Saves `state` at its own step, with `meta`.

  A state holding NaN/Inf is never saved (FloatingPointError), so the last
  checkpoint of a diverged run is a good one. With async saving this returns
  once the arrays are copied off the device; `manager.wait_until_finished()`
  waits for the files.

  Args:
    manager: from make_manager.
    state: the TrainState.
    meta: a dict of JSON values or numpy/JAX numbers (iterator position,
      config, ...).
    metrics: test metrics {'accuracy', 'loss'} measured on this very state,
      for keep_best_metric; None if there are none.
  Returns:
    The step saved.
  """
  step = int(state.step)
  arrays = _state_arrays(state)
  # Host copies, checked here and then dropped: Orbax makes its own, so the
  # state can be donated to the next step while the files are written.
  leaves = integrity.host_leaves(arrays)
  if not integrity.all_finite(leaves):
    raise FloatingPointError(
        f"the train state after step {step} holds NaN or Inf; not saving it "
        "(the previous checkpoint is kept)")
  meta = _jsonable({**meta, "checksums": integrity.checksums(leaves)})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
               metrics=_jsonable(metrics), force=True)
  return step


def _placed(abstract, sharding=None):
  """`abstract` (shapes and dtypes) with every array placed by `sharding`,
  by default on the first local device: without one, Orbax restores onto
  the devices it saved from, and refuses when there are others ('Topology
  mismatch')."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)


def _saved_shapes(directory, step):
  """The shapes and dtypes of checkpoint `step`'s 'state' arrays, as saved."""
  metadata = ocp.StandardCheckpointHandler().metadata(
      epath.Path(directory) / str(step) / "state")
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                      dict(metadata.tree))


def restore(manager, abstract_state, step, check_meta=None, sharding=None):
  """(state, meta) of checkpoint `step`.

  Args:
    manager: from make_manager.
    abstract_state: a TrainState or its jax.eval_shape (shapes and dtypes
      only); its apply_fn and tx are kept.
    step: the step to restore.
    check_meta: called with the meta before any array is read; may raise
      (e.g. a config that does not match).
    sharding: where every array goes (e.g. replicated over a run's mesh, on
      all processes of a multi-process run); None: the first local device.
      Any device or process count: a checkpoint saved on another one
      restores (its arrays are replicated; Orbax reads them whole).
  Raises:
    CheckpointError: the checkpoint is missing, unreadable or damaged.
  """
  if step not in manager.all_steps():
    raise CheckpointError(
        f"no checkpoint of step {step} in {manager.directory} (there are: "
        f"{', '.join(map(str, manager.all_steps())) or 'none'})")
  try:
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # pylint: disable=broad-except
    # Orbax and TensorStore raise many types (even bare Exception).
    raise CheckpointError(f"checkpoint step {step}: its meta cannot be read "
                          f"({type(e).__name__}: {str(e)[:200]})") from e
  if check_meta is not None:
    check_meta(meta)
  abstract = _placed(jax.eval_shape(_state_arrays, abstract_state), sharding)
  abandoned_reads.quiet(manager.directory)
  try:
    arrays = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"checkpoint step {step}: its arrays cannot be read "
                          f"({type(e).__name__}: {str(e)[:200]})") from e
  integrity.verify(arrays, meta, step)
  rng = arrays["rng"]
  if jax.dtypes.issubdtype(abstract_state.rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  state = abstract_state.replace(
      step=arrays["step"], params=arrays["params"],
      batch_stats=arrays["batch_stats"], opt_state=arrays["opt_state"],
      rng=rng)
  return state, meta


def restore_latest(manager, abstract_state, check_meta=None, sharding=None,
                   all_read=None):
  """(state, meta) of the newest checkpoint that reads back intact.

  A damaged checkpoint is skipped with a warning naming its step, and the one
  before it is tried. Arguments as for `restore`; all_read(read) (several
  processes, called in each after each step tried): whether all read it
  intact, the same answer in all (so all skip a step one cannot read).
  Raises:
    CheckpointError: there is no checkpoint, or none is intact.
  """
  damaged = []
  for step in reversed(manager.all_steps()):
    try:
      restored = restore(manager, abstract_state, step, check_meta, sharding)
      if all_read is None or all_read(True):
        return restored
      error = f"checkpoint step {step}: another process could not read it"
    except CheckpointError as e:
      if all_read is not None:
        all_read(False)
      error = str(e)
    logging.warning("%s; skipping it, trying the one before", error)
    damaged.append(error)
  if not damaged:
    raise CheckpointError(f"no checkpoint in {manager.directory}")
  raise CheckpointError(f"no intact checkpoint in {manager.directory}: "
                        + "; ".join(damaged))


def set_aside(workdir, steps):
  """Renames checkpoint folders `<step>` to `<step>.damaged`: Orbax ignores
  them, the files stay for inspection, and those steps can be saved again."""
  for step in steps:
    path = os.path.join(checkpoint_dir(workdir), str(step))
    os.rename(path, path + ".damaged")


def restore_variables(path):
  """{'params', 'batch_stats'} (host arrays) of the newest intact checkpoint
  at `path`, whatever model and optimizer saved it: read without a target
  state, so another model can start from them (transfer/restore.py's init_from).

  Args:
    path: a run folder, its checkpoints/ folder, or checkpoints/<step>.
  Raises:
    CheckpointError: no checkpoint there, or none reads back intact.
  """
  path = os.path.abspath(path)
  step = None
  if (os.path.basename(path).isdigit() and
      os.path.basename(os.path.dirname(path)) == "checkpoints"):
    step, path = int(os.path.basename(path)), os.path.dirname(path)
  if os.path.basename(path) == "checkpoints":
    path = os.path.dirname(path)
  steps = saved_steps(path)
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(
        f"no checkpoint {'of step %d ' % step if step is not None else ''}"
        f"in {checkpoint_dir(path)} (there are: "
        f"{', '.join(map(str, steps)) or 'none'})")
  manager = make_manager(path)
  abandoned_reads.quiet(manager.directory)
  damaged = []
  try:
    for candidate in [step] if step is not None else reversed(steps):
      try:
        target = _placed(_saved_shapes(manager.directory, candidate))
        restored = manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        damaged.append(f"checkpoint step {candidate}: cannot be read "
                       f"({type(e).__name__}: {str(e)[:200]})")
        continue
      arrays, meta = restored["state"], restored["meta"]
      variables = {"batch_stats": arrays.get("batch_stats") or {},
                   "params": arrays["params"]}
      leaves = integrity.host_leaves(variables)  # batch_stats first, as saved
      expected = meta.get("checksums")
      if expected is not None:
        # Saved in the order batch_stats, opt_state, params, rng, step. The
        # optimizer state comes back in other containers (no target) but
        # with as many leaves, so the variables' positions are known.
        num_stats = len(jax.tree.leaves(variables["batch_stats"]))
        num_params = len(leaves) - num_stats
        params_from = num_stats + len(jax.tree.leaves(arrays.get("opt_state")))
        saved = (expected[:num_stats] +
                 expected[params_from:params_from + num_params])
        if integrity.checksums(leaves) != saved:
          damaged.append(f"checkpoint step {candidate}: its params or "
                         "batch_stats do not match their checksums")
          continue
      return jax.device_get(variables)
  finally:
    manager.close()
  raise CheckpointError(f"no intact checkpoint in {checkpoint_dir(path)}: "
                        + "; ".join(damaged))
