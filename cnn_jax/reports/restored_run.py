"""A finished run read back from its workdir, and its predictions.

`load_run(workdir)` gives a RestoredRun: summary.json, the config, the data
splits, the normalisation and the train state of the final (or a chosen)
checkpoint; `predict(run)` evaluates it on a whole split (or any
ArrayDataset) and returns the logits with the task's metrics. Used by the
reports (cnn_jax/reports/report.py) and the lecture experiments.
"""

import dataclasses
import functools
import os
from typing import Any, Dict

import jax
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.training import steps


@dataclasses.dataclass
class RestoredRun:
  """A finished run, read back: its summary.json, config, data and the
  train state of its final checkpoint."""

  workdir: str
  summary: Dict[str, Any]
  config: ml_collections.ConfigDict
  splits: Dict[str, Any]
  state: Any
  step: int
  mean: np.ndarray
  std: np.ndarray

  @property
  def variables(self):
    return {"params": self.state.params,
            "batch_stats": self.state.batch_stats}

  def normalize(self, images):
    """uint8 images [B, H, W, C] -> the float inputs the model was trained
    on."""
    images = np.asarray(images, np.float32) / 255.0
    return (images - self.mean) / self.std


def load_run(workdir, step=None):
  """RestoredRun of `workdir`: the checkpoint of `step`, default the final
  one (summary.json's step, else the latest intact checkpoint).

  Raises:
    FileNotFoundError: no summary.json.
    checkpoint.CheckpointError: no intact checkpoint.
  """
  summary = workdirs.read_summary(workdir)
  if summary is None:
    raise FileNotFoundError(
        f"no summary.json in {workdir!r}: not a run folder, or the run has "
        "not finished (train it with launch.py first)")
  config = ml_collections.ConfigDict(_tuples(summary["config"]))
  splits = load_splits(config.data)
  train_set = splits["train"]
  # As the training loop counts them: the optimizer's structure (transfer
  # groups, schedules) can depend on it.
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  abstract = steps.abstract_train_state(config, train_set.example_shape,
                                        per_epoch)
  manager = checkpoint.make_manager(workdir)
  try:
    if step is None and summary.get("steps") in manager.all_steps():
      step = summary["steps"]
    if step is None:
      state, _ = checkpoint.restore_latest(manager, abstract)
    else:
      state, _ = checkpoint.restore(manager, abstract, step)
  finally:
    manager.close()
  normalization = summary.get("normalization")
  if normalization:
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
  else:
    mean, std = steps.normalization_stats(config.data, train_set)
  return RestoredRun(os.path.abspath(workdir), summary, config, splits, state,
                     int(state.step), mean, std)


def _tuples(tree):
  """The config as the config file made it: JSON turned its tuples into
  lists, and a list where a default holds a tuple reads as a changed
  setting (transfer.plan.is_active would see transfer.load=['.*'] as on)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def predict(run, split="test", dataset=None):
  """(logits float [N, K], metrics dict) of `run`'s model on every example of
  `split` (or of `dataset`, an ArrayDataset such as shifted test images),
  through steps.eval_step/evaluate (last batch padded and masked).
  """
  # The run's own task (its class weights, options) and per-example
  # outputs (a multi-label run's scores for AUROC), plus the logits.
  base = _task(run)
  own = base.eval_examples or (lambda logits, batch: {})
  task = dataclasses.replace(
      base,
      eval_examples=lambda logits, batch: {**own(logits, batch),
                                           "logits": logits},
      finalize=lambda sums, examples: {
          **base.finalize(sums, {k: v for k, v in examples.items()
                                 if k != "logits"}),
          "logits": examples["logits"]})
  # On every device of this process, as the run evaluated (config.mesh).
  mesh = mesh_lib.run_mesh(run.config)
  replicated = mesh_lib.replicated(mesh)
  on_data = mesh_lib.batch_sharding(mesh)
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=run.mean,
                                      std=run.std, task=task),
                    in_shardings=(replicated, on_data))
  dataset = run.splits[split] if dataset is None else dataset
  metrics = steps.evaluate(eval_fn, jax.device_put(run.state, replicated),
                           dataset, run.config.data.eval_batch_size, task,
                           sharding=on_data)
  logits = np.asarray(metrics.pop("logits"))
  return logits, metrics


def _task(run):
  from cnn_jax import tasks  # pylint: disable=g-import-not-at-top
  return tasks.task_for_run(run.config, run.splits["train"])
