"""Classification + localization: one object per image, its class and box.

The model is any classifier built with num_classes = K + 4 (e.g. simple_cnn):
its output [B, K + 4] is split into class logits [B, K] and four box numbers
[B, 4], which sigmoid maps to (cy, cx, h, w) in [0, 1] (fractions of the
image) and then to the corners (y0, x0, y1, x1): a predicted box is never
inverted and never leaves the image.

Labels float32 [B, 5] = (class, y0, x0, y1, x1), boxes in [0, 1]
(data/digit_boxes.py, source 'mnist_localization').

Loss per example: softmax cross-entropy of the class
  + l1_weight * mean |box - target| (corners)
  + giou_weight * (1 - GIoU(box, target))
(the L1 + GIoU mix of DETR, Carion et al., 2020). Metrics: accuracy (class),
mean_iou, iou50 (fraction of boxes with IoU >= 0.5) and correct50 (right
class and IoU >= 0.5). Label smoothing applies to the class term; mixup and
cutmix do not apply.

Config (`config.localization`, optional): l1_weight (default 5.0),
giou_weight (default 2.0).
"""

import jax
import jax.numpy as jnp

from cnn_jax.tasks import boxes as boxes_lib
from cnn_jax.tasks import losses
from cnn_jax.tasks.base import Task

BOX_OUTPUTS = 4


def split_outputs(outputs):
  """[B, K + 4] -> (class logits [B, K], boxes [B, 4] (y0, x0, y1, x1))."""
  logits, raw_box = outputs[..., :-BOX_OUTPUTS], outputs[..., -BOX_OUTPUTS:]
  centre_size = jax.nn.sigmoid(raw_box.astype(jnp.float32))
  centre, size = centre_size[..., :2], centre_size[..., 2:]
  return logits, jnp.concatenate([centre - size / 2, centre + size / 2], -1)


def _targets(batch):
  labels = batch["label"]
  return labels[..., 0].astype(jnp.int32), labels[..., 1:]


def make_localization_task(l1_weight=5.0, giou_weight=2.0):
  """The localization Task with the given box-loss weights."""

  def loss(outputs, batch, label_smoothing=0.0):
    logits, predicted = split_outputs(outputs)
    classes, target = _targets(batch)
    class_loss = losses.softmax_cross_entropy(logits, classes,
                                              label_smoothing)
    l1 = jnp.mean(jnp.abs(predicted - target), axis=-1)
    giou = boxes_lib.giou(predicted, target)
    return class_loss + l1_weight * l1 + giou_weight * (1.0 - giou)

  def _scores(outputs, batch):
    logits, predicted = split_outputs(outputs)
    classes, target = _targets(batch)
    correct = (jnp.argmax(logits, -1) == classes).astype(jnp.float32)
    iou = boxes_lib.iou(predicted, target)
    return correct, iou

  def train_metrics(outputs, batch):
    correct, iou = _scores(outputs, batch)
    return {"accuracy": jnp.mean(correct), "mean_iou": jnp.mean(iou)}

  def eval_sums(outputs, batch):
    mask = batch["mask"].astype(jnp.float32)
    correct, iou = _scores(outputs, batch)
    hit = (iou >= 0.5).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss(outputs, batch) * mask),
            "correct": jnp.sum(correct * mask),
            "iou_sum": jnp.sum(iou * mask),
            "iou50": jnp.sum(hit * mask),
            "correct50": jnp.sum(correct * hit * mask),
            "count": jnp.sum(mask)}

  def finalize(sums, examples=None):
    del examples
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count,
            "accuracy": float(sums["correct"]) / count,
            "mean_iou": float(sums["iou_sum"]) / count,
            "iou50": float(sums["iou50"]) / count,
            "correct50": float(sums["correct50"]) / count,
            "count": int(sums["count"])}

  return Task(name="localization", loss=loss, train_metrics=train_metrics,
              eval_sums=eval_sums, finalize=finalize, headline="mean_iou",
              for_run=_for_run)


def _for_run(config, train_set):
  shape = train_set.labels.shape
  if len(shape) != 2 or shape[1] != 1 + BOX_OUTPUTS:
    raise ValueError(
        f"config.task='localization' needs labels [N, 5] = (class, y0, x0, "
        f"y1, x1); {train_set.name} has labels of shape {shape}")
  classes = config.model.get("num_classes", 0) - BOX_OUTPUTS
  top = int(train_set.labels[:, 0].max())
  if classes <= top:
    raise ValueError(
        f"config.task='localization': config.model.num_classes must be "
        f"K + 4 = {top + 1 + BOX_OUTPUTS} (K classes + 4 box outputs), got "
        f"{config.model.get('num_classes')}")
  options = config.get("localization", {})
  return make_localization_task(options.get("l1_weight", 5.0),
                                options.get("giou_weight", 2.0))


LOCALIZATION = make_localization_task()
