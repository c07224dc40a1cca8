"""Loss functions: pure, per-batch means over the examples that count."""

import jax
import jax.numpy as jnp
import numpy as np
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


def soft_target_cross_entropy(logits, targets, label_smoothing=0.0):
  """Per-example cross-entropy [B] from logits [B, K] and soft targets
  [B, K] (rows summing to 1, e.g. from mixup/cutmix)."""
  return optax.softmax_cross_entropy(
      logits, optax.smooth_labels(targets, label_smoothing))


# --- multi-label (sigmoid) losses --------------------------------------------


def chexnet_class_weights(labels):
  """Per-class (w_pos [L], w_neg [L]) float32 from training labels [N, L].

  CheXNet (Rajpurkar et al., 2017, eq. 1) weights the binary cross-entropy
  of each class by the training label frequencies,
    w_pos = |N| / (|P| + |N|),   w_neg = |P| / (|P| + |N|),
  with |P| and |N| the numbers of positive and negative training examples of
  that class: the rare outcome gets the large weight, and each class's
  positives and negatives contribute equally to the expected loss. (The paper
  states it for its single Pneumonia label; applied per class as in its
  14-label extension.) A class with no positives or no negatives gets
  (0.5, 0.5) rather than a zero weight on the examples it has.
  """
  labels = np.asarray(labels, np.float64)
  if labels.ndim != 2:
    raise ValueError(f"multi-label targets must be [N, L], got shape "
                     f"{labels.shape}")
  total = max(len(labels), 1)
  positives = labels.sum(axis=0)
  w_pos = (total - positives) / total
  w_neg = positives / total
  degenerate = (positives == 0) | (positives == total)
  w_pos[degenerate] = w_neg[degenerate] = 0.5
  return w_pos.astype(np.float32), w_neg.astype(np.float32)


def weighted_sigmoid_cross_entropy(logits, labels, pos_weight=None,
                                   neg_weight=None):
  """Per-example weighted binary cross-entropy [B], the mean over L labels.

    loss = mean_l -(w_pos[l] y_l log s(z_l) + w_neg[l] (1 - y_l) log(1 - s(z_l)))

  with s the sigmoid, computed from the logits z as log_sigmoid(z) and
  log_sigmoid(-z) (stable for large |z|).

  Args:
    logits: [B, L] float.
    labels: [B, L] 0/1 (or soft targets in [0, 1]).
    pos_weight, neg_weight: [L] (or scalars); None: 1.
  """
  labels = labels.astype(jnp.float32)
  pos_weight = 1.0 if pos_weight is None else jnp.asarray(pos_weight)
  neg_weight = 1.0 if neg_weight is None else jnp.asarray(neg_weight)
  per_label = -(pos_weight * labels * jax.nn.log_sigmoid(logits)
                + neg_weight * (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  return jnp.mean(per_label, axis=-1)


# --- segmentation (per-pixel) losses -----------------------------------------


def pixel_softmax_cross_entropy(logits, labels):
  """Per-example mean over pixels [B] of the softmax cross-entropy, from
  logits [B, H, W, K] and int class-per-pixel labels [B, H, W]."""
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels.astype(jnp.int32))
  return jnp.mean(per_pixel, axis=tuple(range(1, per_pixel.ndim)))


def soft_dice_loss(logits, labels, smooth=1.0, absent_classes=False):
  """Per-example soft Dice loss [B] (Milletari et al., 2016), averaged over
  the classes present in the example's target:

    1 - mean_k (2 sum_p P_pk G_pk + smooth) / (sum_p P_pk + sum_p G_pk + smooth)

  P = softmax(logits) [B, H, W, K], G = one_hot(labels) [B, H, W, K], sums
  over the pixels p of one example.

  Why only present classes (absent_classes=False): for a class absent from
  the target the term is smooth / (sum_p P_pk + smooth), whose gradient
  (about 1 / smooth per pixel) is an L1 penalty on the class's whole
  probability mass, far stronger than the cross-entropy's per-pixel pull.
  A class that looks like another (a 4 like a 9) is then pushed to zero
  everywhere and never predicted (observed on the digit canvases: IoU 0 for
  the 4s). Wrong predictions of absent classes are left to the
  cross-entropy. absent_classes=True averages over all K classes.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  axes = tuple(range(1, logits.ndim - 1))
  intersection = jnp.sum(probs * target, axis=axes)  # [B, K]
  target_size = jnp.sum(target, axis=axes)
  total = jnp.sum(probs, axis=axes) + target_size
  dice = (2.0 * intersection + smooth) / (total + smooth)
  if absent_classes:
    return 1.0 - jnp.mean(dice, axis=-1)
  present = (target_size > 0).astype(jnp.float32)
  return 1.0 - jnp.sum(dice * present, axis=-1) / jnp.maximum(
      jnp.sum(present, axis=-1), 1.0)
