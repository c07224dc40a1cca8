"""What a run keeps in its checkpoints besides the train state, so that a
resumed run continues bitwise as if never stopped: the step, the data
iterator's position, the current log window's per-step metrics and the
latest test metrics (with the config and normalisation, `run_meta`); and
restoring a checkpoint for evaluation (evaluate_checkpoint, --mode=evaluate),
onto the run's mesh.
"""

import dataclasses
import functools
import json

import jax
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.distributed import multihost
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.tasks import task_for_run
from cnn_jax.training import matmul_precision
from cnn_jax.training import multistep
from cnn_jax.training import steps
from cnn_jax.training import train_log


def fresh_progress():
  """Where a new run starts (the same keys as a checkpoint's meta)."""
  return {"step": 0, "position": {"epoch": 0, "batch": 0},
          "pending_metrics": [], "test_metrics": None}


def restore_latest(config, workdir, example_shape, steps_per_epoch,
                   sharding=None):
  """(state, meta) of the latest intact checkpoint in `workdir`.

  The checkpoint's config must match `config` (workdirs.check_resumable).
  Damaged checkpoints newer than the one used are set aside, so the resumed
  run can save those steps again. `sharding`: where the arrays go (the
  run's replicated sharding; any device or process count: every device
  holds the whole state).
  """
  abstract = steps.abstract_train_state(config, example_shape, steps_per_epoch)
  check = lambda meta: workdirs.check_resumable(meta["config"], config,
                                                meta["step"])
  manager = checkpoint.make_manager(workdir)
  try:
    state, meta = _agreed_latest(manager, abstract, check, sharding)
  finally:
    manager.close()
  # Every process has read the checkpoints before process 0 renames any.
  multihost.barrier("checkpoint restored")
  if multihost.is_main():
    with workdirs.writing(workdir):
      checkpoint.set_aside(workdir, [s for s in checkpoint.saved_steps(workdir)
                                     if s > meta["step"]])
  return state, meta


def _agreed_latest(manager, abstract, check, sharding):
  """checkpoint.restore_latest in every process, on the same step: a step
  that one process cannot read (a damaged file only it reads, or sees) is
  skipped by all. (A collective per step tried: every process calls it at
  the same point.)"""
  return checkpoint.restore_latest(
      manager, abstract, check, sharding,
      all_read=lambda read: not multihost.any_process(not read))


def save_checkpoint(manager, state, position, pending, test_metrics,
                     evaluated, run_meta):
  """Saves `state` with what resuming needs: the iterator position, the
  current log window's per-step metrics (so the resumed run logs the same
  windows), the latest test metrics, and `run_meta` (config, normalization).
  """
  records = multistep.host_records(pending)
  step = int(state.step)
  train_log.check_finite(records, step - len(records))  # names a NaN's step
  meta = {"step": step, "position": dataclasses.asdict(position),
          "pending_metrics": [{k: float(v) for k, v in r.items()}
                              for r in records],
          "test_metrics": test_metrics, **run_meta}
  checkpoint.save(manager, state, meta,
                  metrics=test_metrics if evaluated else None)


def restore_for_evaluation(config, workdir, step=None, sharding=None):
  """(state, train_set, test_set, mean, std) of the checkpoint of `step`
  (None: the latest intact one), for evaluating it (--mode=evaluate,
  --mode=heatmap). The checkpoint's config must match `config`; mean/std
  are the statistics the run normalised with. `sharding`: as for
  restore_latest."""
  splits = load_splits(config.data)
  train_set, test_set = splits["train"], splits["test"]
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  abstract = steps.abstract_train_state(config, train_set.example_shape,
                                        per_epoch)
  check = lambda meta: workdirs.check_resumable(meta["config"], config,
                                                meta.get("step"))
  manager = checkpoint.make_manager(workdir)
  try:
    if step is None:
      state, meta = _agreed_latest(manager, abstract, check, sharding)
    else:
      state, meta = checkpoint.restore(manager, abstract, step, check,
                                       sharding)
  finally:
    manager.close()
  if "normalization" in meta:
    mean = np.asarray(meta["normalization"]["mean"], np.float32)
    std = np.asarray(meta["normalization"]["std"], np.float32)
  else:
    mean, std = steps.normalization_stats(config.data, train_set)
  return state, train_set, test_set, mean, std


@matmul_precision.applied
def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step=None):
  """Evaluates a checkpoint of `workdir` on the whole test split.

  Args:
    config: the run's config (it must match the checkpoint's, as for
      resuming).
    workdir: the run folder.
    step: the checkpoint's step; None: the latest intact one.
  Returns:
    (results dict, path): written to eval.json, or to eval_step<N>.json when
    eval.json exists (an existing result is never overwritten).
  """
  mesh = mesh_lib.run_mesh(config)
  replicated = mesh_lib.replicated(mesh)
  on_data = mesh_lib.batch_sharding(mesh)
  state, train_set, test_set, mean, std = restore_for_evaluation(
      config, workdir, step, sharding=replicated)
  task = task_for_run(config, train_set)
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=mean, std=std,
                                      task=task),
                    in_shardings=(replicated, on_data))
  step = int(state.step)
  # Chosen before the evaluation (a collective), so before process 0 writes.
  path = workdirs.new_result_path(workdir, "eval.json", f"eval_step{step}.json")
  metrics = steps.evaluate(eval_fn, state, test_set,
                           config.data.eval_batch_size, task, sharding=on_data)
  results = {"step": step, "test_accuracy": metrics["accuracy"],
             "test_loss": metrics["loss"], "test_examples": metrics["count"],
             "task": task.name, "test_metrics": metrics,
             "device": jax.devices()[0].device_kind,
             "devices": int(mesh.devices.size), "config": config.to_dict()}
  if multihost.is_main():
    with open(path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return results, path
