"""The Task interface: what the network predicts and how it is scored.

A task is a bundle of pure functions over (logits, batch). The training and
evaluation code never looks at labels itself, so classification, multi-label,
segmentation, localization and detection share one train_step / eval_step.
`batch['label']` holds whatever the task's targets are ([B] class ids,
[B, L] multi-hot, [B, H, W] masks, [B, M, 5] boxes, ...), and eval batches
carry 'mask' [B] (False on padding).
"""

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Task:
  """Attributes:
    name: the value of `config.task`.
    loss: (logits, batch, label_smoothing) -> per-example loss [B].
    train_metrics: (logits, batch) -> dict of scalars logged during training.
    eval_sums: (logits, batch) -> dict of sums over unmasked examples; sums of
      batches add up to the split's sums. Must include 'loss_sum', 'count'.
    finalize: (sums, examples) -> dict of float metrics for the split.
    eval_examples: optional (logits, batch) -> dict of per-example arrays
      [B, ...] (e.g. scores for AUROC); evaluate() keeps the unmasked rows and
      passes them, concatenated, to finalize.
    headline: the key of finalize's dict that summarises a run (reported
      first, used for 'best' checkpoints).
    for_run: optional (config, train_set) -> Task: this task specialised to a
      run, with options from the config and statistics of the training
      labels baked into its functions (e.g. the multi-label task's per-class
      positive weights). `tasks.task_for_run` applies it; None: the task is
      used as is.
  """

  name: str
  loss: Callable
  train_metrics: Callable
  eval_sums: Callable
  finalize: Callable
  eval_examples: Optional[Callable] = None
  headline: str = "accuracy"
  for_run: Optional[Callable] = None
