"""Axis-aligned boxes: area, IoU, generalised IoU, non-maximum suppression.

Boxes are (y0, x0, y1, x1) on the last axis, [..., 4], in any one unit
(pixels, or fractions of the image); a box with y1 <= y0 or x1 <= x0 is empty
(area 0). Everything here is jax.numpy, jittable, and takes numpy arrays too.
"""

import jax
import jax.numpy as jnp

_EPS = 1e-9


def area(boxes):
  """[..., 4] -> [...]: (y1 - y0) * (x1 - x0), 0 for empty boxes."""
  height = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  width = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return height * width


def _intersection_and_union(a, b):
  top_left = jnp.maximum(a[..., :2], b[..., :2])
  bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0.0), axis=-1)
  return inter, area(a) + area(b) - inter


def iou(a, b):
  """Intersection over union of a [..., 4] and b [..., 4] (broadcast) -> [...].

  0 where both boxes are empty (no division by zero).
  """
  inter, union = _intersection_and_union(a, b)
  return inter / jnp.maximum(union, _EPS)


def giou(a, b):
  """Generalised IoU (Rezatofighi et al., 2019) -> [...], in [-1, 1].

  IoU - (C - union) / C, where C is the area of the smallest box enclosing
  both: unlike IoU it still says how far apart two disjoint boxes are, so
  1 - giou is a useful loss when the prediction misses the target.
  """
  inter, union = _intersection_and_union(a, b)
  enclosing = area(jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                                    jnp.maximum(a[..., 2:], b[..., 2:])], -1))
  return (inter / jnp.maximum(union, _EPS)
          - (enclosing - union) / jnp.maximum(enclosing, _EPS))


def pairwise_iou(a, b):
  """IoU of every box of a [N, 4] with every box of b [M, 4] -> [N, M]."""
  return iou(a[:, None, :], b[None, :, :])


def nms(boxes, scores, iou_threshold=0.5, classes=None):
  """Greedy non-maximum suppression with a fixed output size (jittable).

  In order of decreasing score, a box is kept unless it overlaps an already
  kept box (of the same class, when `classes` is given) with IoU greater than
  `iou_threshold`.

  Args:
    boxes: [N, 4].
    scores: [N]; boxes with score -inf are never kept.
    iou_threshold: overlap above which the lower-scored box is dropped.
    classes: optional int [N]: suppress only within a class.
  Returns:
    bool [N], True for the kept boxes (in the input order).
  """
  n = boxes.shape[0]
  order = jnp.argsort(-scores)
  sorted_boxes = boxes[order]
  overlaps = pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold
  if classes is not None:
    sorted_classes = classes[order]
    overlaps &= sorted_classes[:, None] == sorted_classes[None, :]
  valid = jnp.isfinite(scores[order])

  def visit(i, keep):
    # Box i survives if no earlier (higher-scored) kept box overlaps it.
    earlier = jnp.arange(n) < i
    suppressed = jnp.any(keep & earlier & overlaps[:, i])
    return keep.at[i].set(valid[i] & ~suppressed)

  keep_sorted = jax.lax.fori_loop(0, n, visit, jnp.zeros(n, bool))
  return jnp.zeros(n, bool).at[order].set(keep_sorted)
