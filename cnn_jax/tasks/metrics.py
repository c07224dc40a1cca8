"""Metric functions shared by the tasks: pure, numpy/jax in, numbers out."""

import jax.numpy as jnp
import numpy as np

# --- ranking: AUROC ----------------------------------------------------------


def average_ranks(values):
  """1-based ranks of `values` [N], ties sharing the mean of their ranks
  (scipy.stats.rankdata's 'average')."""
  values = np.asarray(values)
  order = np.argsort(values, kind="mergesort")
  ordered = values[order]
  # Start of each run of equal values in sorted order, and the run's mean rank.
  starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
  ends = np.concatenate([starts[1:], [len(values)]])
  run_ranks = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(run_ranks, ends - starts)
  return ranks


def roc_auc(labels, scores):
  """Exact area under the ROC curve of `scores` [N] for 0/1 `labels` [N].

  The Mann-Whitney statistic: the probability that a random positive scores
  above a random negative, counting ties as 1/2, which is the trapezoidal
  area under the ROC curve (sklearn.metrics.roc_auc_score). NaN when the
  labels hold only one class (the AUROC is undefined).
  """
  labels = np.asarray(labels).astype(bool).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  positives = int(labels.sum())
  negatives = len(labels) - positives
  if positives == 0 or negatives == 0:
    return float("nan")
  rank_sum = average_ranks(scores)[labels].sum()
  return float((rank_sum - positives * (positives + 1) / 2.0)
               / (positives * negatives))


def per_class_roc_auc(labels, scores):
  """float64 [L]: roc_auc of each column of labels [N, L], scores [N, L]."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  return np.array([roc_auc(labels[:, k], scores[:, k])
                   for k in range(labels.shape[1])])


# --- counts: F1, Dice, IoU ---------------------------------------------------


def f1_from_counts(true_pos, false_pos, false_neg):
  """F1 = 2 TP / (2 TP + FP + FN), elementwise; 0 where all three are 0
  (sklearn's zero_division=0)."""
  true_pos, false_pos, false_neg = (np.asarray(x, np.float64) for x in
                                    (true_pos, false_pos, false_neg))
  denominator = 2 * true_pos + false_pos + false_neg
  return np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1e-12),
                  0.0)


def confusion_matrix(labels, predictions, num_classes, weights=None):
  """float32 [K, K] counts (jax.numpy, jittable): entry [t, p] is the (weighted)
  number of elements of true class t predicted as p.

  Args:
    labels, predictions: int arrays of one shape (e.g. [B, H, W]).
    num_classes: K.
    weights: optional array of that shape (e.g. a padding mask broadcast).
  """
  index = (labels.astype(jnp.int32) * num_classes
           + predictions.astype(jnp.int32)).reshape(-1)
  weights = (jnp.ones(index.shape, jnp.float32) if weights is None
             else jnp.broadcast_to(weights, labels.shape).reshape(-1)
             .astype(jnp.float32))
  counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[index].add(
      weights)
  return counts.reshape(num_classes, num_classes)


def iou_and_dice(confusion):
  """(IoU [K], Dice [K]) per class from a confusion matrix [K, K] (numpy).

  IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN); NaN for a class
  absent from both labels and predictions (left out of nanmean averages).
  """
  confusion = np.asarray(confusion, np.float64)
  true_pos = np.diag(confusion)
  false_pos = confusion.sum(axis=0) - true_pos
  false_neg = confusion.sum(axis=1) - true_pos
  union = true_pos + false_pos + false_neg
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, true_pos / union, np.nan)
    dice = np.where(union > 0, 2 * true_pos / (union + true_pos), np.nan)
  return iou, dice
