"""Object detection, CenterNet-style (Zhou et al., 2019, "Objects as Points").

Outputs [B, G, G', K + 4] of models.centernet.CenterNet (a grid of cells,
stride S = image side / G): K heat-map logits, then per cell the offset of an
object's centre within the cell and the object's height and width, in cells.
Labels float32 [B, M, 5] = (class, y0, x0, y1, x1) per object, boxes in
[0, 1] of the image, class -1 in the unused rows (data/digit_boxes.py,
source 'mnist_detection').

Targets (`encode_targets`): for an object with centre c (in cells), the cell
floor(c) is its peak; the heat map of its class holds an elliptical Gaussian
exp(-dy^2 / 2 sy^2 - dx^2 / 2 sx^2) around that cell with s = alpha * size
/ 6 (TTFNet's alpha = 0.54), the maximum over objects; the box channels at
the peak cell must give c - floor(c) and the size.

Loss per example, normalised by its number of objects: CenterNet's focal
loss on the heat maps + offset_weight * L1(offset) + size_weight * L1(size)
at the peak cells (weights 1 and 0.1, as CenterNet).

Decoding (`decode`): heat-map peaks (cells equal to the 3x3 maximum around
them), the top_k scores over cells and classes, the box at each, then greedy
NMS (IoU > nms_iou; across classes unless nms_per_class). Evaluation runs
pycocotools' COCOeval on all test images: map50 (AP at IoU 0.5, the
headline), map (AP averaged over IoU 0.5:0.95), map75, ar100. 'accuracy' is
the fraction of images read exactly right: with the detections scoring at
least score_threshold, every object found once with its class at IoU >= 0.5
and nothing else.

Config (`config.detection`, optional): offset_weight (1.0), size_weight
(0.1), heatmap_alpha (0.54), top_k (20), nms_iou (0.5), nms_per_class
(False), score_threshold (0.3).
"""

import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.tasks import boxes as boxes_lib
from cnn_jax.tasks.base import Task

BOX_CHANNELS = 4


@dataclasses.dataclass(frozen=True)
class DetectionOptions:
  offset_weight: float = 1.0
  size_weight: float = 0.1
  heatmap_alpha: float = 0.54
  top_k: int = 20
  nms_iou: float = 0.5
  nms_per_class: bool = False
  score_threshold: float = 0.3


def encode_targets(labels, grid_shape, num_classes, alpha=0.54):
  """Training targets of one image.

  Args:
    labels: [M, 5] (class, y0, x0, y1, x1), boxes in [0, 1]; class < 0: no
      object.
    grid_shape: (G, G') of the output grid.
    num_classes: K.
    alpha: Gaussian width as a fraction of the object size (s = alpha*size/6).
  Returns:
    heat [G, G', K] in [0, 1] (exactly 1 at each object's peak cell),
    cells int32 [M, 2] (peak cell (row, col)), box_targets [M, 4]
    (offset_y, offset_x, height, width in cells), valid bool [M].
  """
  grid = jnp.asarray(grid_shape, jnp.float32)
  classes = labels[:, 0].astype(jnp.int32)
  valid = classes >= 0
  corners = labels[:, 1:] * jnp.concatenate([grid, grid])
  centre = (corners[:, :2] + corners[:, 2:]) / 2
  size = corners[:, 2:] - corners[:, :2]
  cells = jnp.clip(jnp.floor(centre), 0, grid - 1)
  sigma = jnp.maximum(alpha * size / 6, 0.25)
  rows = jnp.arange(grid_shape[0], dtype=jnp.float32)
  cols = jnp.arange(grid_shape[1], dtype=jnp.float32)
  dy = (rows[None, :] - cells[:, :1]) / sigma[:, :1]  # [M, G]
  dx = (cols[None, :] - cells[:, 1:]) / sigma[:, 1:]  # [M, G']
  gauss = jnp.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2))
  one_hot = jax.nn.one_hot(classes, num_classes) * valid[:, None]
  heat = jnp.max(gauss[..., None] * one_hot[:, None, None, :], axis=0)
  box_targets = jnp.concatenate([centre - cells, size], axis=-1)
  return heat, cells.astype(jnp.int32), box_targets, valid


def focal_loss_sum(logits, target):
  """CenterNet's penalty-reduced focal loss, summed: [G, G', K] -> []."""
  positive = target >= 1.0
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  p = jnp.exp(log_p)
  pos = -jnp.square(1 - p) * log_p
  neg = -jnp.power(1 - target, 4) * jnp.square(p) * log_not_p
  return jnp.sum(jnp.where(positive, pos, neg))


def _box_at(outputs, cells, num_classes):
  """The 4 box channels [M, 4] of outputs [G, G', K + 4] at cells [M, 2]."""
  return outputs[cells[:, 0], cells[:, 1], num_classes:]


def detection_loss(outputs, labels, options=DetectionOptions()):
  """Per-example loss [B] from outputs [B, G, G', K + 4], labels [B, M, 5]."""
  num_classes = outputs.shape[-1] - BOX_CHANNELS

  def one(out, label):
    heat, cells, box_targets, valid = encode_targets(
        label, out.shape[:2], num_classes, options.heatmap_alpha)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    heat_loss = focal_loss_sum(out[..., :num_classes], heat)
    error = jnp.abs(_box_at(out, cells, num_classes) - box_targets)
    error = error * valid[:, None]
    return (heat_loss + options.offset_weight * jnp.sum(error[:, :2])
            + options.size_weight * jnp.sum(error[:, 2:])) / count

  return jax.vmap(one)(outputs.astype(jnp.float32), labels)


def decode(outputs, options=DetectionOptions()):
  """Detections from outputs [B, G, G', K + 4].

  Returns:
    boxes [B, top_k, 4] (y0, x0, y1, x1) in [0, 1] of the image, scores
    [B, top_k] (0 for boxes removed by NMS), classes int32 [B, top_k].
  """
  outputs = outputs.astype(jnp.float32)
  b, g_rows, g_cols, channels = outputs.shape
  num_classes = channels - BOX_CHANNELS
  heat = jax.nn.sigmoid(outputs[..., :num_classes])
  neighbourhood_max = jax.lax.reduce_window(
      heat, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
  peaks = jnp.where(heat >= neighbourhood_max, heat, 0.0)
  scores, index = jax.lax.top_k(peaks.reshape(b, -1), options.top_k)
  classes = (index % num_classes).astype(jnp.int32)
  cell = index // num_classes
  rows, cols = cell // g_cols, cell % g_cols
  box = jnp.take_along_axis(
      outputs[..., num_classes:].reshape(b, g_rows * g_cols, BOX_CHANNELS),
      cell[..., None], axis=1)
  cy = (rows + box[..., 0]) / g_rows
  cx = (cols + box[..., 1]) / g_cols
  h, w = box[..., 2] / g_rows, box[..., 3] / g_cols
  boxes = jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
  nms = lambda bx, sc, cl: boxes_lib.nms(
      bx, sc, options.nms_iou, cl if options.nms_per_class else None)
  keep = jax.vmap(nms)(boxes, scores, classes)
  return boxes, jnp.where(keep, scores, 0.0), classes


def exact_images(boxes, scores, classes, labels, score_threshold=0.3):
  """bool [B]: the confident detections (score >= score_threshold) are
  exactly the objects: each found with its class at IoU >= 0.5, none extra."""

  def one(bx, sc, cl, label):
    confident = sc >= score_threshold
    gt_class = label[:, 0].astype(jnp.int32)
    valid = gt_class >= 0
    match = ((boxes_lib.pairwise_iou(label[:, 1:], bx) >= 0.5)
             & (gt_class[:, None] == cl[None, :]) & confident[None, :])
    found = jnp.all(jnp.any(match, axis=1) | ~valid)
    return found & (jnp.sum(confident) == jnp.sum(valid))

  return jax.vmap(one)(boxes, scores, classes, labels)


def coco_map(det_boxes, det_scores, det_classes, gt_labels, image_size=1.0):
  """COCO mAP of detections against ground truth, by pycocotools.

  Args:
    det_boxes: [N, D, 4] (y0, x0, y1, x1) in [0, 1]; det_scores [N, D]
      (rows with score <= 0 are not detections); det_classes int [N, D].
    gt_labels: [N, M, 5] (class, y0, x0, y1, x1), class < 0: none.
    image_size: pixels per unit box coordinate (COCO's area ranges use
      pixels; the overall numbers do not depend on it).
  Returns:
    {'map': AP@[.5:.95], 'map50', 'map75', 'ar100'}; all 0.0 when there are
    no detections.
  """
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

  def xywh(box):
    y0, x0, y1, x1 = (float(v) * image_size for v in box)
    return [x0, y0, x1 - x0, y1 - y0]

  gt_labels = np.asarray(gt_labels)
  classes = sorted({int(c) for c in gt_labels[..., 0].ravel() if c >= 0}
                   | {int(c) for c in np.asarray(det_classes).ravel()})
  images, annotations, results = [], [], []
  for i in range(len(gt_labels)):
    images.append({"id": i + 1})
    for row in gt_labels[i]:
      if row[0] >= 0:
        bbox = xywh(row[1:])
        # ids start at 1: COCOeval marks unmatched with id 0.
        annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                            "category_id": int(row[0]) + 1, "bbox": bbox,
                            "area": bbox[2] * bbox[3], "iscrowd": 0})
    for box, score, cls in zip(det_boxes[i], det_scores[i], det_classes[i]):
      if score > 0:
        results.append({"image_id": i + 1, "category_id": int(cls) + 1,
                        "bbox": xywh(box), "score": float(score)})
  if not results or not annotations:
    return {"map": 0.0, "map50": 0.0, "map75": 0.0, "ar100": 0.0}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints a lot
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": c + 1} for c in classes]}
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  stats = evaluator.stats
  return {"map": float(stats[0]), "map50": float(stats[1]),
          "map75": float(stats[2]), "ar100": float(stats[8])}


def make_detection_task(options=DetectionOptions()):
  """The detection Task with the given options."""

  def loss(outputs, batch, label_smoothing=0.0):
    del label_smoothing  # no class softmax to smooth
    return detection_loss(outputs, batch["label"], options)

  def train_metrics(outputs, batch):
    del outputs, batch
    return {}

  def eval_sums(outputs, batch):
    mask = batch["mask"].astype(jnp.float32)
    exact = exact_images(*decode(outputs, options), batch["label"],
                         options.score_threshold)
    return {"loss_sum": jnp.sum(loss(outputs, batch) * mask),
            "exact": jnp.sum(exact * mask),
            "count": jnp.sum(mask)}

  def eval_examples(outputs, batch):
    boxes, scores, classes = decode(outputs, options)
    return {"boxes": boxes, "scores": scores, "classes": classes,
            "label": batch["label"],
            "image_size": jnp.full((outputs.shape[0],),
                                   batch["image"].shape[1], jnp.float32)}

  def finalize(sums, examples):
    count = max(float(sums["count"]), 1.0)
    result = {"loss": float(sums["loss_sum"]) / count,
              "accuracy": float(sums["exact"]) / count,
              "count": int(sums["count"])}
    if examples:
      result.update(coco_map(examples["boxes"], examples["scores"],
                             examples["classes"], examples["label"],
                             float(examples["image_size"][0])))
    return result

  return Task(name="detection", loss=loss, train_metrics=train_metrics,
              eval_sums=eval_sums, eval_examples=eval_examples,
              finalize=finalize, headline="map50", for_run=_for_run)


def _for_run(config, train_set):
  shape = train_set.labels.shape
  if len(shape) != 3 or shape[2] != 1 + BOX_CHANNELS:
    raise ValueError(
        f"config.task='detection' needs labels [N, M, 5] = (class, y0, x0, "
        f"y1, x1) per object; {train_set.name} has labels of shape {shape}")
  options = config.get("detection", {})
  fields = {f.name for f in dataclasses.fields(DetectionOptions)}
  unknown = set(options) - fields
  if unknown:
    raise ValueError(f"config.detection.{sorted(unknown)[0]} is not an "
                     f"option; known: {', '.join(sorted(fields))}")
  return make_detection_task(DetectionOptions(**dict(options)))


DETECTION = make_detection_task()
