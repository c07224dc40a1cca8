"""Figures of a run's results (matplotlib, PNG files): learning curves,
confusion matrix, per-class accuracy and grids of examples.

What a figure shows is computed by pure functions of arrays
(`confusion_matrix`, `per_class_accuracy`); each `plot_*` function draws one
figure into one PNG and returns its path. Figures of what happens inside a
model (filters, feature maps, saliency, heat maps) are in visualize_model.py;
the shared matplotlib set-up (Agg backend, `DPI`, `png_size`) is in
plotting.py.

Every figure has a title, labelled axes and, where colour carries a value, a
colorbar. A PNG is exactly `figsize * DPI` pixels (the sizes are given in
each docstring). Images are [H, W, C] (C = 1 or 3) uint8 pixels or floats of
any range (shown min-max scaled).
"""

import math

import numpy as np

from cnn_jax.reports import plotting
# pyplot after plotting, which selects the Agg backend (no display needed).
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

# Splits of metrics.jsonl that hold metrics (others, e.g. 'resumed', mark
# events).
_EVAL_SPLITS = ("val", "test")


def _class_names(class_names, num_classes):
  if class_names is not None and len(class_names) >= num_classes:
    return [str(c) for c in class_names[:num_classes]]
  return [str(k) for k in range(num_classes)]


# --------------------------------------------------------------------------
# Learning curves.


def plot_learning_curves(records, path):
  """Loss, accuracy and learning rate against the step: 1500 x 400 pixels.

  Args:
    records: dicts as written to metrics.jsonl (keys step, split, loss,
      accuracy, learning_rate); 'train' records are drawn as lines, 'val' and
      'test' records as points. Records superseded by a resumed run are
      dropped, other splits (e.g. 'resumed' markers) ignored.
    path: PNG file to write.
  """
  from cnn_jax.runs import writers  # pylint: disable=g-import-not-at-top
  records = writers.drop_superseded(list(records))
  train = [r for r in records if r["split"] == "train"]
  evals = {s: [r for r in records if r["split"] == s] for s in _EVAL_SPLITS}
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, key in zip(axes[:2], ("loss", "accuracy")):
    ax.plot([r["step"] for r in train], [r.get(key, np.nan) for r in train],
            label="train")
    for split, rows in evals.items():
      if rows:
        ax.plot([r["step"] for r in rows], [r.get(key, np.nan) for r in rows],
                "o-", label=split)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(key.capitalize())
    ax.grid(alpha=0.3)
    ax.legend()
  if all(r.get("loss", 0) > 0 for r in records if r["split"] == "train"):
    axes[0].set_yscale("log")
  axes[2].plot([r["step"] for r in train],
               [r.get("learning_rate", np.nan) for r in train])
  axes[2].set_xlabel("step")
  axes[2].set_ylabel("learning rate")
  axes[2].set_title("Learning rate")
  axes[2].grid(alpha=0.3)
  fig.tight_layout()
  return plotting.save_figure(fig, path)


def plot_curve_comparison(curves, path, title, ylabel, xlabel="epoch"):
  """Several named curves on one axis: 800 x 500 pixels.

  Args:
    curves: {label: (x values, y values)}; a label containing 'train' is
      drawn dashed, so train/test pairs of one colour read at a glance when
      their labels share a prefix (e.g. 'no aug train', 'no aug test').
    path: PNG file to write.
    title, ylabel, xlabel: the figure's labels.
  """
  fig, ax = plt.subplots(figsize=(8, 5))
  colours = {}
  for label, (xs, ys) in curves.items():
    group = label.replace("train", "").replace("test", "").strip()
    colour = colours.setdefault(group, f"C{len(colours)}")
    ax.plot(xs, ys, "--" if "train" in label else "o-", color=colour,
            label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return plotting.save_figure(fig, path)


# --------------------------------------------------------------------------
# Confusion matrix and per-class accuracy.


def confusion_matrix(labels, predictions, num_classes):
  """int64 [K, K] counts: row = true class, column = predicted class."""
  labels = np.asarray(labels, np.int64).ravel()
  predictions = np.asarray(predictions, np.int64).ravel()
  if labels.shape != predictions.shape:
    raise ValueError(f"{labels.size} labels but {predictions.size} "
                     "predictions")
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def per_class_accuracy(matrix):
  """[K] fraction of each true class predicted correctly (recall); NaN for
  a class with no examples."""
  matrix = np.asarray(matrix, np.float64)
  totals = matrix.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def _matrix_side(num_classes):
  return max(6, round(0.5 * num_classes + 3))


def draw_confusion(fig, ax, matrix, names, fontsize=8, annotate_up_to=30):
  """Draws the row-normalised confusion matrix into `ax` (counts in the
  cells when K <= annotate_up_to) with its colour bar; shared by the report
  (plot_confusion_matrix) and the paper (reports/paper/figures.py), which
  differ only in size and type."""
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  colorbar.set_label("fraction of the true class")
  if k <= annotate_up_to:
    for i in range(k):
      for j in range(k):
        if matrix[i, j]:
          ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                  fontsize=fontsize,
                  color="white" if fractions[i, j] > 0.5 else "black")
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  long_names = max(map(len, names)) > 2
  ax.set_xticklabels(names, rotation=45 if long_names else 0,
                     ha="right" if long_names else "center")
  ax.set_yticklabels(names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")


def plot_confusion_matrix(matrix, path, class_names=None, title=None):
  """Row-normalised confusion matrix with the counts written in the cells.

  Colour is the fraction of each true class (row) given each prediction, so
  the diagonal reads as per-class recall whatever the class sizes.
  Size: (s + 1) x s inches with s = max(6, round(K / 2 + 3)): 900 x 800
  pixels for 10 classes.
  """
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  side = _matrix_side(k)
  fig, ax = plt.subplots(figsize=(side + 1, side))
  draw_confusion(fig, ax, matrix, _class_names(class_names, k),
                 fontsize=8 if k <= 15 else 6)
  total = matrix.sum()
  accuracy = np.trace(matrix) / max(total, 1)
  ax.set_title(title or f"Confusion matrix ({total} examples, accuracy "
               f"{accuracy:.2%})")
  fig.tight_layout()
  return plotting.save_figure(fig, path)


def plot_per_class_accuracy(matrix, path, class_names=None, title=None):
  """Bar per class of its accuracy (recall), with the overall accuracy as a
  line. Size: max(6, round(0.6 K + 2)) x 4 inches: 800 x 400 pixels for 10
  classes."""
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  names = _class_names(class_names, k)
  recall = per_class_accuracy(matrix)
  overall = np.trace(matrix) / max(matrix.sum(), 1)
  fig, ax = plt.subplots(figsize=(max(6, round(0.6 * k + 2)), 4))
  bars = ax.bar(range(k), np.nan_to_num(recall), color="C0")
  ax.axhline(overall, color="C3", linestyle="--",
             label=f"overall {overall:.2%}")
  for bar, value in zip(bars, recall):
    if np.isfinite(value):
      ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
              f"{value:.1%}", ha="center", va="bottom", fontsize=7)
  low = np.nanmin(recall) if np.isfinite(recall).any() else 0.0
  ax.set_ylim(max(0.0, min(low, overall) - 0.1), 1.04)
  ax.set_xticks(range(k))
  ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 2 else 0,
                     ha="right" if max(map(len, names)) > 2 else "center")
  ax.set_xlabel("true class")
  ax.set_ylabel("accuracy (recall)")
  ax.set_title(title or "Per-class test accuracy")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  return plotting.save_figure(fig, path)


# --------------------------------------------------------------------------
# Example grids.


def plot_misclassified(images, labels, predictions, path, class_names=None,
                       probabilities=None, max_examples=24, columns=6,
                       title=None):
  """A grid of the misclassified examples, titled 'true -> predicted'.

  With `probabilities` ([N, K] softmax outputs) the most confident mistakes
  come first and each title gives the predicted class's probability.
  Size: 2 * columns x (2 * rows + 1) inches, rows = ceil(shown / columns)
  (at least 1): 1200 x 900 pixels for 24 shown in 6 columns.

  Args:
    images: [N, H, W, C] the examples as stored (uint8 pixels).
    labels, predictions: int [N].
    path: PNG file to write.
  """
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  wrong = np.flatnonzero(labels != predictions)
  confidence = None
  if probabilities is not None:
    probabilities = np.asarray(probabilities)
    confidence = probabilities[np.arange(len(predictions)), predictions]
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
  shown = wrong[:max_examples]
  rows = max(1, math.ceil(len(shown) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 1),
                           squeeze=False)
  names = _class_names(class_names, int(max(labels.max(initial=0),
                                            predictions.max(initial=0))) + 1)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, i in zip(axes.ravel(), shown):
    label = f"#{i}: {names[labels[i]]} -> {names[predictions[i]]}"
    if confidence is not None:
      label += f" ({confidence[i]:.0%})"
    plotting.show_image(ax, images[i], label)
    ax.axis("on")
  if not len(shown):
    axes[0, 0].text(0.0, 0.5, "no misclassified examples", fontsize=12)
  how = ("true -> predicted (probability), most confident first"
         if confidence is not None else "true -> predicted")
  fig.suptitle(title or f"Misclassified: {len(wrong)} of {len(labels)} "
               f"examples; {how}")
  fig.tight_layout()
  return plotting.save_figure(fig, path)


def plot_image_grid(images, titles, path, columns=6, title=None):
  """Images [N, H, W, C] with a title each: 2 * columns x (2 * rows + 1)
  inches (rows = ceil(N / columns))."""
  rows = max(1, math.ceil(len(images) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 1),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image, label in zip(axes.ravel(), images, titles):
    plotting.show_image(ax, image, label)
    ax.axis("on")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return plotting.save_figure(fig, path)
