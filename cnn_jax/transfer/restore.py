"""Partial restore: a new model's variables, some copied from a source.

Every variable selected by `transfer.load` and not by `transfer.dont_load`
(the plan's backbone) is copied from the source, which must hold it with the
same shape (an error lists each missing path and each shape mismatch with
both shapes); the others keep their fresh initialisation. Sources: a run
folder (its latest intact checkpoint, via runs/checkpoint.py) or a weights
file (.safetensors, .npz, .pth: pretrained.py).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.runs import checkpoint
from cnn_jax.transfer import paths
from cnn_jax.transfer import plan as plan_lib
from cnn_jax.transfer import pretrained

def load_source(init_from):
  """{'params', 'batch_stats'} (numpy) from a run folder or a weights file."""
  path = os.path.expanduser(init_from)
  if os.path.isdir(path):
    return checkpoint.restore_variables(path)
  if os.path.isfile(path):
    return pretrained.load(path)
  raise FileNotFoundError(
      f"config.transfer.init_from={init_from!r}: no such run folder or "
      "weights file")


def restore_variables(plan, target, source, source_name="the source"):
  """`target` with the variables the plan loads copied from `source`.

  Args:
    plan: a Plan (its load / dont_load patterns).
    target: {'params', 'batch_stats'} of the new model (fresh init).
    source: {'params', 'batch_stats'} to restore from (numpy or jax).
    source_name: names the source in error messages.
  Returns:
    (variables, restored): the merged variables (the target's structure and
    dtypes) and the sorted list of restored paths.
  Raises:
    ValueError: a selected variable is missing from the source or has
      another shape there (every such path is named, with both shapes).
  """
  merged, restored, missing, mismatched = {}, [], [], []
  for collection in paths.COLLECTIONS:
    if collection not in target:
      continue
    available = paths.flatten(source.get(collection, {}))

    def take(key_path, fresh, collection=collection, available=available):
      path = paths.path_str(key_path)
      if not plan.is_backbone(path):
        return fresh
      if path not in available:
        missing.append(f"{collection}/{path}")
        return fresh
      value = available[path]
      if tuple(np.shape(value)) != tuple(fresh.shape):
        mismatched.append(f"{collection}/{path}: {tuple(np.shape(value))} in "
                          f"{source_name}, {tuple(fresh.shape)} in the model")
        return fresh
      restored.append(f"{collection}/{path}")
      return jnp.asarray(value, fresh.dtype)

    merged[collection] = jax.tree_util.tree_map_with_path(
        take, target[collection])
  problems = []
  if mismatched:
    problems.append(f"{len(mismatched)} variable(s) have another shape: "
                    + "; ".join(mismatched))
  if missing:
    problems.append(f"{len(missing)} variable(s) are not in {source_name}: "
                    + ", ".join(missing))
  if problems:
    raise ValueError(
        f"cannot restore from {source_name}: " + ". ".join(problems) +
        ". Keep their fresh initialisation with config.transfer.dont_load "
        "(e.g. ('head/.*',) for a new head), or fix config.transfer.load")
  return merged, sorted(restored)


def restore_init_from(state, transfer_config, report=None):
  """`state` with `transfer.init_from` restored into its params and
  batch_stats where `load`/`dont_load` say (unchanged when there is no
  init_from). `report` (e.g. print) gets a one-line summary."""
  if not plan_lib.is_active(transfer_config) or not transfer_config.init_from:
    return state
  plan = plan_lib.Plan.from_config(transfer_config)
  source = load_source(transfer_config.init_from)
  variables, restored = restore_variables(
      plan, {"params": state.params, "batch_stats": state.batch_stats},
      source, repr(transfer_config.init_from))
  if report is not None:
    fresh = [f"{c}/{p}" for c in paths.COLLECTIONS
             for p in paths.flatten(variables.get(c, {}))
             if f"{c}/{p}" not in restored]
    report(f"transfer: restored {len(restored)} variables from "
           f"{transfer_config.init_from}; fresh: {', '.join(fresh) or 'none'}")
  return state.replace(params=variables["params"],
                       batch_stats=variables["batch_stats"])
