"""Classification metrics as sums, so batches and padded examples add up."""

import jax.numpy as jnp

from cnn_jax import losses


def classification_sums(logits, labels, mask, label_smoothing=0.0):
  """Summed loss, correct count and example count over unmasked examples."""
  mask = mask.astype(jnp.float32)
  per_example = losses.softmax_cross_entropy(logits, labels, label_smoothing)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(per_example * mask),
      "correct": jnp.sum(correct * mask),
      "count": jnp.sum(mask),
  }


def finalize(sums):
  """Turns accumulated sums into {'loss', 'accuracy', 'count'}."""
  count = max(float(sums["count"]), 1.0)
  return {"loss": float(sums["loss_sum"]) / count,
          "accuracy": float(sums["correct"]) / count,
          "count": int(sums["count"])}
