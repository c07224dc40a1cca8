"""Multi-label classification (CheXNet-style): L independent sigmoid outputs.

Labels are multi-hot [B, L] (a binary task is L = 1). The loss is the binary
cross-entropy averaged over the L labels, each class weighted by its training
label frequencies as in CheXNet (losses.chexnet_class_weights):
w_pos = N_neg / N on positives, w_neg = N_pos / N on negatives.

How the weights reach the loss: `MULTILABEL` (TASKS['multilabel']) is the
unweighted task; `tasks.task_for_run(config, train_set)` calls its `for_run`,
which counts the training labels once and returns a Task whose loss closes
over the [L] weights (constants of the jitted step). Batches stay
{'image', 'label'}, and the same config and training split always give the
same weights (so an evaluation or heat-map run rebuilds them).

Config (`config.multilabel`, all optional):
  class_weighting: 'chexnet' (default) or 'none'.
  threshold: probability from which a label is predicted present (for
    accuracy and F1), default 0.5.

Metrics (finalize): loss; mean_auroc and auroc/<class> (exact, tie-aware, from
every example's score: eval_examples keeps them); mean_f1 and f1/<class> at
the threshold; accuracy (exact match: all L labels right; for L = 1 the usual
accuracy); label_accuracy (the fraction of the N * L labels right). A class
whose test labels are all 0 or all 1 has AUROC NaN and is left out of the
mean.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.tasks import losses
from cnn_jax.tasks import metrics
from cnn_jax.tasks.base import Task

WEIGHTINGS = ("chexnet", "none")


def _targets(batch, label_smoothing):
  # Mixup/cutmix put mixed multi-hot targets [B, L] into the batch.
  targets = batch.get("soft_target", batch["label"]).astype(jnp.float32)
  # Smoothing towards 1/2, the uninformed probability of a binary label.
  return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def make_multilabel_task(pos_weight=None, neg_weight=None, threshold=0.5,
                         class_names=()):
  """The multi-label Task with fixed class weights.

  Args:
    pos_weight, neg_weight: [L] weights of the positive / negative terms of
      each class's binary cross-entropy; None: 1.
    threshold: probability from which a label counts as predicted present.
    class_names: L names for the per-class metric keys ('auroc/<name>');
      empty: '0', '1', ...
  """
  pos = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
  neg = None if neg_weight is None else jnp.asarray(neg_weight, jnp.float32)
  logit_threshold = float(np.log(threshold) - np.log1p(-threshold))

  def loss(logits, batch, label_smoothing=0.0):
    return losses.weighted_sigmoid_cross_entropy(
        logits, _targets(batch, label_smoothing), pos, neg)

  def predicted(logits):
    return logits >= logit_threshold  # sigmoid(z) >= threshold

  def train_metrics(logits, batch):
    right = predicted(logits) == batch["label"].astype(bool)
    return {"accuracy": jnp.mean(jnp.all(right, axis=-1)),
            "label_accuracy": jnp.mean(right)}

  def eval_sums(logits, batch):
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"].astype(bool)
    guess = predicted(logits)
    per_example = losses.weighted_sigmoid_cross_entropy(
        logits, labels, pos, neg)
    weight = mask[:, None]
    return {"loss_sum": jnp.sum(per_example * mask),
            "count": jnp.sum(mask),
            "correct": jnp.sum(jnp.all(guess == labels, axis=-1) * mask),
            "labels_correct": jnp.sum((guess == labels) * weight),
            "true_pos": jnp.sum((guess & labels) * weight, axis=0),
            "false_pos": jnp.sum((guess & ~labels) * weight, axis=0),
            "false_neg": jnp.sum((~guess & labels) * weight, axis=0)}

  def eval_examples(logits, batch):
    return {"score": jax.nn.sigmoid(logits), "label": batch["label"]}

  def finalize(sums, examples):
    count = max(float(sums["count"]), 1.0)
    num_labels = len(np.asarray(sums["true_pos"]))
    names = tuple(class_names) or tuple(str(k) for k in range(num_labels))
    if examples:
      auroc = metrics.per_class_roc_auc(examples["label"], examples["score"])
    else:  # an evaluation that kept no per-example scores
      auroc = np.full(num_labels, np.nan)
    f1 = metrics.f1_from_counts(sums["true_pos"], sums["false_pos"],
                                sums["false_neg"])
    result = {
        "loss": float(sums["loss_sum"]) / count,
        "accuracy": float(sums["correct"]) / count,
        "label_accuracy": float(sums["labels_correct"]) / (count * num_labels),
        "mean_auroc": (float(np.nanmean(auroc)) if np.isfinite(auroc).any()
                       else float("nan")),
        "mean_f1": float(np.mean(f1)),
        "count": int(sums["count"]),
    }
    result.update({f"auroc/{n}": float(a) for n, a in zip(names, auroc)})
    result.update({f"f1/{n}": float(f) for n, f in zip(names, f1)})
    return result

  return Task(name="multilabel", loss=loss, train_metrics=train_metrics,
              eval_sums=eval_sums, finalize=finalize,
              eval_examples=eval_examples, headline="mean_auroc",
              for_run=_for_run)


def _for_run(config, train_set):
  """The task for a run: config.multilabel's options and the CheXNet
  weights of `train_set`'s labels [N, L]."""
  options = config.get("multilabel", {})
  weighting = options.get("class_weighting", "chexnet")
  threshold = options.get("threshold", 0.5)
  if weighting not in WEIGHTINGS:
    raise ValueError(f"config.multilabel.class_weighting={weighting!r} is "
                     f"not one of: {', '.join(WEIGHTINGS)}")
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"config.multilabel.threshold={threshold} is not in "
                     "(0, 1)")
  labels = np.asarray(train_set.labels)
  if labels.ndim != 2:
    raise ValueError(
        f"config.task='multilabel' needs multi-hot labels [N, L]; "
        f"{train_set.name} has labels of shape {labels.shape}")
  pos_weight = neg_weight = None
  if weighting == "chexnet":
    pos_weight, neg_weight = losses.chexnet_class_weights(labels)
  return make_multilabel_task(pos_weight, neg_weight, threshold,
                              train_set.class_names)


MULTILABEL = make_multilabel_task()
