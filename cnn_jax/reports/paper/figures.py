"""The paper's figures as vector PDFs (matplotlib), sized for ICML's
3.25 in column so they are included at 100% and their text stays 7-8 pt:

  learning_curves.pdf  every run's training loss and accuracy (train
                       dashed, test/val points) against the epoch, on
                       shared axes; one colour per group
  confusion.pdf        the confusion matrix of the best run (its final
                       checkpoint re-evaluated on the whole test split)
  examples.pdf         test images of the best run with true -> predicted
                       class, the most confident mistakes first
  heatmaps.pdf         Grad-CAM heat maps over test images
  masks.pdf            true and predicted segmentation masks

Each `plot_*` returns a Figure record (file, height in inches, caption,
label, priority: the lower, the sooner it is suggested for dropping when the
body is over the page limit).
"""

import dataclasses

import numpy as np

from cnn_jax.reports import plotting
from cnn_jax.reports import visualize
from cnn_jax.reports import visualize_model
# pyplot after plotting, which selects the Agg backend.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

COLUMN_IN = 3.25
_RC = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7,
       "legend.fontsize": 6, "xtick.labelsize": 6, "ytick.labelsize": 6,
       "pdf.fonttype": 42, "lines.linewidth": 1.0, "font.family": "serif",
       "font.serif": ["Nimbus Roman", "Times", "DejaVu Serif"],
       "svg.hashsalt": "cnn_jax", "path.simplify": True}


@dataclasses.dataclass
class Figure:
  name: str          # figures/<name>.pdf
  height_in: float
  caption: str
  label: str
  priority: int


def _save(fig, path):
  # A fixed creation date: regenerating the same runs gives the same bytes.
  fig.savefig(path, format="pdf", metadata={"CreationDate": None})
  plt.close(fig)


def _curve(records, split, key):
  rows = [r for r in records if r["split"] == split and key in r]
  return ([r.get("epoch", r["step"]) for r in rows], [r[key] for r in rows])


def plot_learning_curves(groups, path):
  """Train loss (left) and accuracy (right) of every run against the epoch."""
  legend_rows = -(-len(groups) // 3)
  height = 1.6 + 0.14 * legend_rows
  with plt.rc_context(_RC):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(COLUMN_IN, height))
    for i, group in enumerate(groups):
      colour = f"C{i % 10}"
      alpha = 1.0 if len(group.runs) == 1 else 0.7
      for j, run in enumerate(group.runs):
        label = group.label if j == 0 else None
        ax_loss.plot(*_curve(run.records, "train", "loss"), color=colour,
                     alpha=alpha, label=label)
        ax_acc.plot(*_curve(run.records, "train", "accuracy"), "--",
                    color=colour, alpha=alpha)
        for split in ("test", "val"):
          xs, ys = _curve(run.records, split, "accuracy")
          if xs:
            ax_acc.plot(xs, ys, "o-", color=colour, alpha=alpha,
                        markersize=2.5)
            break
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    if all(y > 0 for line in ax_loss.get_lines() for y in line.get_ydata()):
      ax_loss.set_yscale("log")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (train - -, test o)")
    for ax in (ax_loss, ax_acc):
      ax.grid(alpha=0.3, linewidth=0.5)
    # The legend below both panels, where it hides no curve.
    handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)),
               frameon=False, handlelength=1.5, columnspacing=1.0)
    fig.tight_layout(pad=0.3, w_pad=0.8,
                     rect=(0, 0.14 * legend_rows / height + 0.02, 1, 1))
    _save(fig, path)
  return Figure("learning_curves", height,
                "Learning curves of every run on shared axes: training loss "
                "(left), training accuracy (dashed) and test accuracy "
                "(points) against the epoch. Runs of one label (seeds) share "
                "a colour.", "fig:curves", priority=3)


def plot_confusion(matrix, class_names, path, label):
  """The row-normalised confusion matrix with counts in the cells."""
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  names = [str(c) for c in (class_names or range(k))][:k]
  side = 2.6 if k <= 12 else COLUMN_IN
  with plt.rc_context(_RC):
    fig, ax = plt.subplots(figsize=(COLUMN_IN, side))
    visualize.draw_confusion(fig, ax, matrix, names, fontsize=5,
                             annotate_up_to=15)
    fig.tight_layout(pad=0.3)
    _save(fig, path)
  accuracy = np.trace(matrix) / max(matrix.sum(), 1)
  return Figure("confusion", side,
                f"Confusion matrix of the best run ({label}) on its "
                f"{int(matrix.sum()):,} test examples (accuracy "
                f"{100 * accuracy:.2f}\\%): counts, coloured by the fraction "
                "of each true class.", "fig:confusion", priority=2)


def plot_examples(images, labels, logits, class_names, path, label,
                  count=12):
  """Test images titled 'true>predicted': the most confident mistakes,
  then correct ones, `count` in all (two rows)."""
  labels = np.asarray(labels)
  predictions = np.asarray(logits).argmax(-1)
  shifted = logits - logits.max(-1, keepdims=True)
  confidence = (np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
                ).max(-1)
  wrong = np.flatnonzero(predictions != labels)
  wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:count // 2]
  right = np.flatnonzero(predictions == labels)[:count - len(wrong)]
  picks = list(wrong) + list(right)
  names = [str(c) for c in (class_names or range(int(logits.shape[-1])))]
  columns = max(1, (len(picks) + 1) // 2)
  height = 0.95 * COLUMN_IN / 6 * 2
  with plt.rc_context(_RC):
    fig, axes = plt.subplots(2, columns, figsize=(COLUMN_IN, height),
                             squeeze=False)
    for ax in axes.ravel():
      ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
      plotting.show_image(ax, images[i])
      ax.set_title(f"{names[labels[i]]}>{names[predictions[i]]}",
                   fontsize=5, pad=1,
                   color="C3" if labels[i] != predictions[i] else "black")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01,
                        wspace=0.05, hspace=0.3)
    _save(fig, path)
  return Figure("examples", height,
                f"Test images of the best run ({label}), titled true$>$"
                "predicted class: its most confident mistakes (red), then "
                "correct predictions.", "fig:examples", priority=1)


def _image_row(panels, titles, path, height):
  """One row of images (RGB floats or uint8) with small titles."""
  with plt.rc_context(_RC):
    fig, axes = plt.subplots(1, len(panels), figsize=(COLUMN_IN, height),
                             squeeze=False)
    for ax, panel, title in zip(axes[0], panels, titles):
      plotting.show_image(ax, panel)
      ax.set_title(title, fontsize=5, pad=1)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.01,
                        wspace=0.05)
    _save(fig, path)


def plot_heatmaps(images, maps, titles, path, label, layer, what):
  """Each image with its heat map [h, w] (any size, resized) over it, in
  one row; `what`: the output the maps explain, for the caption."""
  height = COLUMN_IN / max(len(images), 1) + 0.15
  _image_row([visualize_model.overlay_heatmap(
      image, np.maximum(np.asarray(heat), 0.0), alpha=0.5, vmin=0.0)
              for image, heat in zip(images, maps)], titles, path, height)
  return Figure("heatmaps", height,
                f"Grad-CAM heat maps at layer \\texttt{{{layer}}} of the "
                f"best run ({label}) over test images, for {what}: where "
                "the evidence lies.", "fig:heatmaps", priority=0)


def plot_masks(pairs, path, label):
  """(true-mask overlay, predicted-mask overlay) per test image, in one
  row: true, predicted, true, predicted, ..."""
  panels = [p for pair in pairs for p in pair]
  titles = ["true", "predicted"] * len(pairs)
  height = COLUMN_IN / max(len(panels), 1) + 0.15
  _image_row(panels, titles, path, height)
  return Figure("masks", height,
                f"Segmentation masks of the best run ({label}): for each "
                "test image the true mask, then the predicted one, over the "
                "image.", "fig:masks", priority=1)


def confusion_matrix(labels, logits):
  k = int(np.asarray(logits).shape[-1])
  return visualize.confusion_matrix(labels, np.asarray(logits).argmax(-1), k)
