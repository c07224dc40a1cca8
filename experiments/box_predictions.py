"""Draws a trained localization or detection run's boxes on test canvases.

  python experiments/box_predictions.py --workdir runs/detect
  python experiments/box_predictions.py --workdir runs/localize --num=25

Reads the run's config and normalisation from <workdir>/summary.json and its
newest checkpoint, predicts the first --num test canvases and writes
<workdir>/predictions.png (or --out): ground-truth boxes dashed green,
predicted boxes red with 'class score' (detection: those scoring at least
config.detection.score_threshold after NMS; localization: the one box and
its class probability).
"""

import argparse
import json
import math
import os
import sys

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import patches
from matplotlib import pyplot as plt

if __package__ in (None, ""):  # run as a file: the repository root on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

from cnn_jax.data import augment
from cnn_jax.data import load_splits
from cnn_jax.runs import checkpoint
from cnn_jax.tasks import detection
from cnn_jax.tasks import localization
from cnn_jax.training import steps


def predict(config, variables, normalization, images):
  """(boxes [N, D, 4] in [0, 1], scores [N, D], classes [N, D]) of the run."""
  model = steps.create_model(config.model)
  x = augment.normalize(images, np.asarray(normalization["mean"], np.float32),
                        np.asarray(normalization["std"], np.float32))
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  if config.task == "detection":
    options = detection.DetectionOptions(**dict(config.get("detection", {})))
    return jax.device_get(detection.decode(outputs, options))
  logits, boxes = localization.split_outputs(outputs)
  probs = jax.nn.softmax(logits, -1)
  return (np.asarray(boxes)[:, None], np.asarray(probs.max(-1))[:, None],
          np.asarray(probs.argmax(-1))[:, None])


def draw(images, labels, boxes, scores, classes, threshold, path, title):
  """A grid of canvases with ground-truth and predicted boxes, to `path`."""
  n = len(images)
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows))
  size = images.shape[1]
  labels = labels.reshape(n, -1, 5)
  for i, ax in enumerate(np.ravel(axes)):
    ax.axis("off")
    if i >= n:
      continue
    ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=255)
    for row in labels[i]:
      if row[0] >= 0:
        y0, x0, y1, x1 = row[1:] * size
        ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                       fill=False, ec="lime", ls="--", lw=1))
    for box, score, cls in zip(boxes[i], scores[i], classes[i]):
      if score < threshold:
        continue
      y0, x0, y1, x1 = box * size
      ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                     fill=False, ec="red", lw=1.2))
      ax.text(x0, y0 - 1, f"{cls} {score:.2f}", color="red", fontsize=7,
              va="bottom")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  with open(os.path.join(args.workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  config = ml_collections.ConfigDict(summary["config"])
  if config.get("task") not in ("localization", "detection"):
    raise SystemExit(f"error: {args.workdir} is a {config.get('task')!r} "
                     "run; this draws localization or detection runs")
  test_set = load_splits(config.data)["test"]
  images = test_set.images[:args.num]
  labels = test_set.labels[:args.num]
  variables = checkpoint.restore_variables(args.workdir)
  boxes, scores, classes = predict(config, variables,
                                   summary["normalization"], images)
  threshold = (config.detection.score_threshold
               if config.task == "detection" else 0.0)
  metrics = summary.get("test_metrics", {})
  headline = ", ".join(f"{k} {metrics[k]:.3f}" for k in
                       ("map50", "map", "mean_iou", "accuracy")
                       if k in metrics)
  out = args.out or os.path.join(args.workdir, "predictions.png")
  draw(np.asarray(images), np.asarray(labels), boxes, scores, classes,
       threshold, out, f"{config.task}: {os.path.basename(args.workdir)} "
       f"(test: {headline}); green dashed = truth, red = predicted")
  print(f"written to {out}")


if __name__ == "__main__":
  main()
