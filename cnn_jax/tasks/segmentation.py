"""Semantic segmentation: a class per pixel.

Logits [B, H, W, K] (e.g. models.unet.UNet), labels int [B, H, W] in
0..K-1 (class 0 is usually the background). The loss is
  ce_weight * per-pixel softmax cross-entropy + dice_weight * soft Dice loss
(losses.pixel_softmax_cross_entropy, losses.soft_dice_loss), each a mean per
example; the Dice term averages the classes present in the example's target
(see soft_dice_loss for why). Label smoothing and mixup do not apply
(ignored).

Evaluation accumulates the K x K pixel confusion matrix over the whole split,
so the metrics are those of the split's pixels, not means of per-image
scores: accuracy (pixel accuracy), iou/<class> and dice/<class>, mean_iou and
mean_dice over all K classes (as PASCAL VOC's mIoU, background included),
and mean_iou_foreground / mean_dice_foreground over classes 1..K-1. A class
absent from both labels and predictions is left out of the means.

Config (`config.segmentation`, optional): ce_weight (default 1.0),
dice_weight (default 1.0).
"""

import jax.numpy as jnp
import numpy as np

from cnn_jax.tasks import losses
from cnn_jax.tasks import metrics
from cnn_jax.tasks.base import Task


def make_segmentation_task(ce_weight=1.0, dice_weight=1.0, class_names=()):
  """The segmentation Task.

  Args:
    ce_weight, dice_weight: weights of the two loss terms.
    class_names: K names for the per-class metric keys; empty: '0', '1', ...
  """

  def loss(logits, batch, label_smoothing=0.0):
    del label_smoothing
    labels = batch["label"]
    total = 0.0
    if ce_weight:
      total += ce_weight * losses.pixel_softmax_cross_entropy(logits, labels)
    if dice_weight:
      total += dice_weight * losses.soft_dice_loss(logits, labels)
    return total

  def train_metrics(logits, batch):
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def eval_sums(logits, batch):
    mask = batch["mask"].astype(jnp.float32)
    per_example = loss(logits, batch)
    pixel_weight = jnp.broadcast_to(mask[:, None, None], batch["label"].shape)
    return {"loss_sum": jnp.sum(per_example * mask),
            "count": jnp.sum(mask),
            "confusion": metrics.confusion_matrix(
                batch["label"], jnp.argmax(logits, -1), logits.shape[-1],
                pixel_weight)}

  def finalize(sums, examples=None):
    del examples
    count = max(float(sums["count"]), 1.0)
    confusion = np.asarray(sums["confusion"], np.float64)
    names = tuple(class_names) or tuple(str(k)
                                        for k in range(len(confusion)))
    iou, dice = metrics.iou_and_dice(confusion)

    def mean(values):
      return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

    result = {"loss": float(sums["loss_sum"]) / count,
              "accuracy": float(np.trace(confusion)
                                / max(confusion.sum(), 1.0)),
              "mean_iou": mean(iou), "mean_dice": mean(dice),
              "mean_iou_foreground": mean(iou[1:]),
              "mean_dice_foreground": mean(dice[1:]),
              "count": int(sums["count"])}
    result.update({f"iou/{n}": float(v) for n, v in zip(names, iou)})
    result.update({f"dice/{n}": float(v) for n, v in zip(names, dice)})
    return result

  return Task(name="segmentation", loss=loss, train_metrics=train_metrics,
              eval_sums=eval_sums, finalize=finalize, headline="mean_iou",
              for_run=_for_run)


def _for_run(config, train_set):
  options = config.get("segmentation", {})
  labels_shape = train_set.labels.shape
  if len(labels_shape) != 3:
    raise ValueError(
        f"config.task='segmentation' needs class-per-pixel labels [N, H, W]; "
        f"{train_set.name} has labels of shape {labels_shape}")
  if tuple(labels_shape[1:]) != tuple(train_set.example_shape[:2]):
    raise ValueError(
        f"{train_set.name}: masks {labels_shape[1:]} differ from the images "
        f"{train_set.example_shape[:2]}")
  return make_segmentation_task(options.get("ce_weight", 1.0),
                                options.get("dice_weight", 1.0),
                                train_set.class_names)


SEGMENTATION = make_segmentation_task()
