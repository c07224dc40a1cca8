"""Single-label classification: softmax cross-entropy and accuracy."""

import jax.numpy as jnp

from cnn_jax.tasks import losses
from cnn_jax.tasks.base import Task


def _loss(logits, batch, label_smoothing=0.0):
  # Mixup/cutmix put soft targets [B, K] into the batch; accuracy still uses
  # the unmixed labels.
  if "soft_target" in batch:
    return losses.soft_target_cross_entropy(logits, batch["soft_target"],
                                            label_smoothing)
  return losses.softmax_cross_entropy(logits, batch["label"], label_smoothing)


def _train_metrics(logits, batch):
  return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def _eval_sums(logits, batch):
  mask = batch["mask"].astype(jnp.float32)
  per_example = losses.softmax_cross_entropy(logits, batch["label"])
  correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
  return {"loss_sum": jnp.sum(per_example * mask),
          "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def _finalize(sums, examples=None):
  del examples
  count = max(float(sums["count"]), 1.0)
  return {"loss": float(sums["loss_sum"]) / count,
          "accuracy": float(sums["correct"]) / count,
          "count": int(sums["count"])}


CLASSIFICATION = Task(name="classification", loss=_loss,
                      train_metrics=_train_metrics, eval_sums=_eval_sums,
                      finalize=_finalize, headline="accuracy")
