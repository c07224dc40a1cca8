"""Deterministic batching: shuffled training batches and padded eval batches.

The training order depends only on (seed, epoch), so a run that stops and
resumes at a saved `IteratorPosition` sees exactly the batches it would have
seen without stopping.
"""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class IteratorPosition:
  """Where the training iterator stands: next batch `batch` of `epoch`.

  `state`: a pipeline's own iterator state at this position, as JSON (the
  Grain pipeline's, grain_pipeline.py), saved with it in checkpoints; None
  for the in-memory iterator, whose position says everything.
  """

  epoch: int = 0
  batch: int = 0
  state: Optional[dict] = None


def epoch_permutation(num_examples, seed, epoch):
  """The example order of one epoch; a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples, batch_size):
  """Training steps per epoch (the last partial batch is dropped)."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
        f"batch_size={batch_size} is larger than the training set "
        f"({num_examples} examples)")
  return steps


def train_batches(dataset, batch_size, seed, start=IteratorPosition(),
                  rows=slice(None)):
  """Yields (position_after, batch) forever, from `start` on.

  Each batch is {'image': uint8 [B, ...], 'label': [B, ...]}; the remainder
  of each epoch is dropped so every step has the same shape (one compile).
  `position_after` is the position to save to resume after this batch.
  `rows`: only these rows of each batch are read and yielded (one process's
  slice of the global batch, distributed/multihost.process_rows); the
  global batches are the same whoever reads them.
  """
  n = len(dataset)
  per_epoch = steps_per_epoch(n, batch_size)
  epoch, index = start.epoch, start.batch
  while True:
    order = epoch_permutation(n, seed, epoch)
    for b in range(index, per_epoch):
      take = np.sort(order[b * batch_size:(b + 1) * batch_size])[rows]
      batch = {"image": dataset.images[take], "label": dataset.labels[take]}
      following = (IteratorPosition(epoch, b + 1) if b + 1 < per_epoch
                   else IteratorPosition(epoch + 1, 0))
      yield following, batch
    epoch, index = epoch + 1, 0


def eval_batches(dataset, batch_size, rows=slice(None)):
  """Yields every example once, in order, in batches of exactly `batch_size`.

  The last batch is padded by repeating example 0, and 'mask' (bool [B]) is
  False on the padding, so metrics cover the full split and nothing more.
  `rows`: only these rows of each (padded) batch, as in train_batches.
  """
  n = len(dataset)
  for start in range(0, n, batch_size):
    take = np.arange(start, min(start + batch_size, n))
    mask = np.ones(batch_size, dtype=bool)
    if len(take) < batch_size:
      mask[len(take):] = False
      take = np.concatenate([take, np.zeros(batch_size - len(take), int)])
    take, mask = take[rows], mask[rows]
    yield {"image": dataset.images[take], "label": dataset.labels[take],
           "mask": mask}
