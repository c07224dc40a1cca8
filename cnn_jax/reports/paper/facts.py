"""What the paper states about a run's data and model, measured rather than
typed: examples per split, input shape, classes and their counts, the
parameter count (jax.eval_shape: no memory for the weights), the task's
headline metric.

`facts_for_config(config)` loads the config's data (load_splits; one load
per distinct data config in a process) and traces its model; it serves the
paper (one Facts per group) and the proposal (before any training).
"""

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import ml_collections
import numpy as np

from cnn_jax import tasks
from cnn_jax.data import load_splits
from cnn_jax.models import summary as model_summary
from cnn_jax.reports.paper import bibliography
from cnn_jax.training import steps

_SPLITS_CACHE = {}


@dataclasses.dataclass
class Facts:
  data_name: str
  split_sizes: Dict[str, int]
  example_shape: Tuple[int, ...]
  num_classes: Optional[int]
  class_names: Optional[List[str]]
  class_counts: Dict[str, List[int]]  # split -> examples per class
  parameters: int
  headline: str
  task: str
  pixel_mean: Optional[List[float]] = None
  pixel_std: Optional[List[float]] = None


def _splits(data_config):
  key = json.dumps(data_config.to_dict(), sort_keys=True, default=str)
  if key not in _SPLITS_CACHE:
    _SPLITS_CACHE[key] = load_splits(data_config)
  return _SPLITS_CACHE[key]


def _class_counts(labels, num_classes):
  labels = np.asarray(labels)
  if labels.ndim == 1 and num_classes and np.issubdtype(labels.dtype,
                                                        np.integer):
    return np.bincount(labels, minlength=num_classes).tolist()
  if labels.ndim == 2 and num_classes and labels.shape[1] == num_classes:
    return labels.sum(axis=0).astype(int).tolist()  # multi-hot
  return []


def parameter_count(model_config, example_shape):
  """Trainable parameters of config.model at inputs of `example_shape`."""
  model = steps.create_model(model_config)
  _, variables = model_summary.layer_table(model, example_shape, max_depth=1)
  return model_summary.count_params(variables.get("params", {}))


def facts_for_config(config, normalization=None):
  """Facts of a config (a ConfigDict or its dict); `normalization`: the
  run's summary.json entry (else measured on the train split)."""
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  splits = _splits(config.data)
  train = splits["train"]
  task = config.get("task", "classification")
  num_classes = config.model.get("num_classes")
  names = train.class_names or None
  counts = {name: _class_counts(split.labels, num_classes)
            for name, split in splits.items()}
  if normalization:
    mean, std = normalization.get("mean"), normalization.get("std")
  else:
    mean, std = steps.normalization_stats(config.data, train)
  return Facts(
      data_name=bibliography.data_name(config.data.to_dict()),
      split_sizes={name: len(split) for name, split in splits.items()},
      example_shape=tuple(int(d) for d in train.example_shape),
      num_classes=num_classes, class_names=list(names) if names else None,
      class_counts=counts,
      parameters=parameter_count(config.model, train.example_shape),
      headline=tasks.get_task(task).headline, task=task,
      pixel_mean=[float(m) for m in np.ravel(mean)] if mean is not None
      else None,
      pixel_std=[float(s) for s in np.ravel(std)] if std is not None
      else None)


def facts_for_groups(groups):
  """{group label: Facts} (the first run of each group)."""
  return {g.label: facts_for_config(g.config,
                                    g.runs[0].summary.get("normalization"))
          for g in groups}
