"""Loss functions: pure, per-batch means over the examples that count."""

import jax
import jax.numpy as jnp
import optax


def masked_mean(values, mask=None):
  """Mean of `values` [B] over examples where mask [B] is True."""
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
  """Per-example cross-entropy [B] from logits [B, K] and int labels [B]."""
  # Always through smooth_labels, so label_smoothing may be a traced value
  # (a per-member hyperparameter in a vmapped sweep).
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  return optax.softmax_cross_entropy(
      logits, optax.smooth_labels(targets, label_smoothing))
