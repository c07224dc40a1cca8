"""Figures of a run (matplotlib, Agg backend, PNG files).

Two kinds of function live here:
  * what a figure shows, computed as pure functions of arrays:
    `confusion_matrix`, `per_class_accuracy`, `intermediates` (every module's
    output, via flax's `capture_intermediates`), `saliency` (input gradients)
    and `overlay_heatmap` (a coarse [H', W'] map blended over an image);
  * `plot_*` functions that draw one figure into one PNG and return its path.

Every figure has a title, labelled axes and, where colour carries a value, a
colorbar. Figures are saved at `DPI` without a tight bounding box, so a PNG is
exactly `figsize * DPI` pixels (the sizes are given in each docstring).
Images are [H, W, C] (C = 1 or 3) uint8 pixels or floats of any range
(shown min-max scaled).
"""

import math
import struct
from typing import Mapping

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

DPI = 100
# Splits of metrics.jsonl that hold metrics (others, e.g. 'resumed', mark
# events).
_EVAL_SPLITS = ("val", "test")


def png_size(path):
  """(width, height) in pixels of a PNG file, read from its header."""
  with open(path, "rb") as f:
    header = f.read(24)
  if header[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path} is not a PNG file")
  return struct.unpack(">II", header[16:24])


def _save(fig, path):
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def _class_names(class_names, num_classes):
  if class_names is not None and len(class_names) >= num_classes:
    return [str(c) for c in class_names[:num_classes]]
  return [str(k) for k in range(num_classes)]


def displayable(image):
  """[H, W] or [H, W, 3] floats in [0, 1] for imshow, from [H, W(, C)]:
  uint8-range pixels are divided by 255, [0, 1] floats kept, anything else
  min-max scaled."""
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  elif image.ndim == 3 and image.shape[-1] != 3:
    image = image.mean(axis=-1)
  if image.ndim not in (2, 3):
    raise ValueError(f"an image must be [H, W] or [H, W, C], got shape "
                     f"{image.shape}")
  lo, hi = float(image.min()), float(image.max())
  if lo >= 0.0 and hi <= 255.0 and hi > 1.0:  # pixel values
    return image / 255.0
  if lo >= 0.0 and hi <= 1.0:
    return image
  return (image - lo) / max(hi - lo, 1e-12)


_displayable = displayable  # the earlier private name, still used


def _show_image(ax, image, title=None):
  shown = displayable(image)
  ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0,
            vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=9)


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
  from cnn_jax import writers  # pylint: disable=g-import-not-at-top
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
  return _save(fig, path)


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
  return _save(fig, path)


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


def plot_confusion_matrix(matrix, path, class_names=None, title=None):
  """Row-normalised confusion matrix with the counts written in the cells.

  Colour is the fraction of each true class (row) given each prediction, so
  the diagonal reads as per-class recall whatever the class sizes.
  Size: (s + 1) x s inches with s = max(6, round(K / 2 + 3)): 900 x 800
  pixels for 10 classes.
  """
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  names = _class_names(class_names, k)
  rows = matrix.sum(axis=1, keepdims=True)
  fractions = matrix / np.maximum(rows, 1)
  side = _matrix_side(k)
  fig, ax = plt.subplots(figsize=(side + 1, side))
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  colorbar.set_label("fraction of the true class")
  if k <= 30:
    for i in range(k):
      for j in range(k):
        if matrix[i, j]:
          ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                  fontsize=8 if k <= 15 else 6,
                  color="white" if fractions[i, j] > 0.5 else "black")
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 2 else 0,
                     ha="right" if max(map(len, names)) > 2 else "center")
  ax.set_yticklabels(names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  total = matrix.sum()
  accuracy = np.trace(matrix) / max(total, 1)
  ax.set_title(title or f"Confusion matrix ({total} examples, accuracy "
               f"{accuracy:.2%})")
  fig.tight_layout()
  return _save(fig, path)


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
  return _save(fig, path)


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
    _show_image(ax, images[i], label)
    ax.axis("on")
  if not len(shown):
    axes[0, 0].text(0.0, 0.5, "no misclassified examples", fontsize=12)
  how = ("true -> predicted (probability), most confident first"
         if confidence is not None else "true -> predicted")
  fig.suptitle(title or f"Misclassified: {len(wrong)} of {len(labels)} "
               f"examples; {how}")
  fig.tight_layout()
  return _save(fig, path)


def plot_image_grid(images, titles, path, columns=6, title=None):
  """Images [N, H, W, C] with a title each: 2 * columns x (2 * rows + 1)
  inches (rows = ceil(N / columns))."""
  rows = max(1, math.ceil(len(images) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 1),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image, label in zip(axes.ravel(), images, titles):
    _show_image(ax, image, label)
    ax.axis("on")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


# --------------------------------------------------------------------------
# Filters and feature maps.


def _grid(count):
  columns = math.ceil(math.sqrt(count))
  return math.ceil(count / columns), columns


def first_conv_kernel(params):
  """The kernel [kh, kw, C_in, C_out] of the first 2D convolution in `params`
  (the first 4-D 'kernel' in flax's definition order), or None."""
  found = []

  def visit(tree):
    for key, value in tree.items():
      if found:
        return
      if isinstance(value, Mapping):
        visit(value)
      elif key == "kernel" and np.ndim(value) == 4:
        found.append(np.asarray(value))

  visit(params)
  return found[0] if found else None


def plot_filters(kernel, path, title=None):
  """Each output filter of a conv kernel [kh, kw, C_in, C_out] as an image.

  Three input channels are shown as colour (each filter min-max scaled on
  its own, as is usual for RGB filters); otherwise the filters (averaged
  over input channels if C_in > 1) share one diverging colour scale with a
  colorbar, so a weight's sign and size read directly.
  Size: (1.5 * columns + 1.5) x (1.5 * rows + 1) inches on a near-square
  grid: 1050 x 1000 pixels for 32 filters (6 x 6 grid).
  """
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim != 4:
    raise ValueError(f"a conv kernel is [kh, kw, C_in, C_out], got shape "
                     f"{kernel.shape}")
  kh, kw, c_in, c_out = kernel.shape
  rows, columns = _grid(c_out)
  fig, axes = plt.subplots(rows, columns,
                           figsize=(1.5 * columns + 1.5, 1.5 * rows + 1),
                           squeeze=False)
  rgb = c_in == 3
  if not rgb:
    weights = kernel.mean(axis=2)  # [kh, kw, C_out]
    limit = float(np.abs(weights).max()) or 1.0
  image = None
  for index, ax in enumerate(axes.ravel()):
    ax.set_xticks([])
    ax.set_yticks([])
    if index >= c_out:
      ax.axis("off")
      continue
    if rgb:
      f = kernel[..., index]
      ax.imshow((f - f.min()) / max(float(f.max() - f.min()), 1e-12),
                interpolation="nearest")
    else:
      image = ax.imshow(weights[..., index], cmap="RdBu_r", vmin=-limit,
                        vmax=limit, interpolation="nearest")
    ax.set_title(f"{index}", fontsize=8)
  channels = ("RGB, each min-max scaled" if rgb else
              "one input channel" if c_in == 1 else
              f"mean over {c_in} input channels")
  fig.suptitle(title or f"First-layer filters: {c_out} of {kh}x{kw} "
               f"({channels})")
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                 label="weight")
  else:
    fig.subplots_adjust(top=0.9)
  return _save(fig, path)


def intermediates(apply_fn, variables, images, train=False):
  """{module path: output} of every module call, e.g. {'conv1': [B, H, W, C]}.

  Uses flax's `capture_intermediates`: outputs of modules only (a function
  such as `nn.relu` or `ops.max_pool` applied between modules is not a
  module, so 'conv1' is the convolution's output before its activation).

  Args:
    apply_fn: a Linen module's `apply` (e.g. `state.apply_fn`).
    variables: {'params': ..., 'batch_stats': ...}.
    images: [B, H, W, C] normalised as the model was trained.
  """
  # One compiled call (eagerly, every layer would compile on its own).
  _, state = jax.jit(lambda v, x: apply_fn(
      v, x, train=train, capture_intermediates=True,
      mutable=["intermediates"]))(variables, jnp.asarray(images))
  flat = {}

  def visit(tree, prefix):
    for key, value in tree.items():
      if key == "__call__":
        flat[prefix] = value[0]
      elif isinstance(value, Mapping):
        visit(value, f"{prefix}/{key}" if prefix else key)

  visit(state["intermediates"], "")
  flat.pop("", None)  # the model's own output (the logits)
  return flat


def feature_maps(apply_fn, variables, image, layer):
  """The output [H', W', C'] of module `layer` (e.g. 'conv1') for one image
  [H, W, C] (normalised as in training)."""
  outputs = intermediates(apply_fn, variables, jnp.asarray(image)[None])
  if layer not in outputs:
    raise ValueError(f"layer {layer!r} is not a module of the model; "
                     f"modules: {', '.join(outputs)}")
  maps = np.asarray(outputs[layer][0])
  if maps.ndim != 3:
    raise ValueError(f"layer {layer!r} outputs shape {maps.shape[1:]} per "
                     "example, not a feature map [H, W, C]")
  return maps


def plot_feature_maps(maps, path, image=None, layer="", max_maps=32,
                      title=None):
  """The channels of a feature map [H', W', C'] (the first `max_maps`) next
  to the input image, on one shared colour scale with a colorbar (diverging
  and centred on 0 when the maps take both signs).

  Size: (1.5 * columns + 3.5) x (1.5 * rows + 1) inches on a near-square
  grid: 1250 x 1000 pixels for 32 maps (6 x 6 grid).
  """
  maps = np.asarray(maps, np.float32)
  if maps.ndim != 3:
    raise ValueError(f"feature maps are [H, W, C], got shape {maps.shape}")
  shown = min(maps.shape[-1], max_maps)
  rows, columns = _grid(shown)
  fig = plt.figure(figsize=(1.5 * columns + 3.5, 1.5 * rows + 1))
  grid = fig.add_gridspec(rows, columns + 2, width_ratios=[2, 0.3] +
                          [1] * columns)
  if image is not None:
    _show_image(fig.add_subplot(grid[0:min(rows, 2), 0]), image, "input")
  low, high = float(maps[..., :shown].min()), float(maps[..., :shown].max())
  cmap = "viridis"
  if low < 0 < high:  # e.g. before the ReLU: the sign matters, 0 is white
    cmap, high = "RdBu_r", max(-low, high)
    low = -high
  picture = None
  for index in range(shown):
    ax = fig.add_subplot(grid[index // columns, 2 + index % columns])
    picture = ax.imshow(maps[..., index], cmap=cmap, vmin=low,
                        vmax=high, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"ch {index}", fontsize=8)
  fig.colorbar(picture, ax=fig.axes[1:] if image is not None else fig.axes,
               shrink=0.8, label="activation")
  h, w, c = maps.shape
  fig.suptitle(title or f"Feature maps of {layer or 'a layer'}: {shown} of "
               f"{c} channels, {h}x{w}")
  return _save(fig, path)


# --------------------------------------------------------------------------
# Saliency and heat maps.


def saliency(apply_fn, variables, images, classes=None):
  """|d logit_class / d input|, max over channels: [B, H, W] (Simonyan et
  al., 2014).

  Args:
    apply_fn, variables: as for `intermediates`.
    images: [B, H, W, C] normalised as in training.
    classes: int [B], the logit to explain per example; None: the predicted
      class.
  """
  images = jnp.asarray(images, jnp.float32)

  def input_gradients(variables, images, classes):
    def chosen_logits(x):
      logits = apply_fn(variables, x, train=False)
      if classes is None:
        picked = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
      else:
        picked = classes
      return jnp.sum(jnp.take_along_axis(logits, picked[:, None], axis=-1))

    return jnp.max(jnp.abs(jax.grad(chosen_logits)(images)), axis=-1)

  if classes is not None:
    classes = jnp.asarray(classes)
  return np.asarray(jax.jit(input_gradients)(variables, images, classes))


def overlay_heatmap(image, heatmap, alpha=0.5, cmap="jet", vmin=None,
                    vmax=None):
  """RGB float [H, W, 3] in [0, 1]: `heatmap` [H', W'] resized (bilinear) to
  the image's H x W, coloured with `cmap` and blended over `image` (weight
  `alpha` for the heat map).

  The heat map is scaled to [0, 1] by (vmin, vmax), default its own min and
  max. Works for any H'/H, e.g. a 7x7 class-activation map over a 224x224
  X-ray.

  Args:
    image: [H, W], [H, W, 1] or [H, W, 3]; uint8 pixels or floats.
    heatmap: [H', W'] floats.
  """
  base = displayable(image)
  if base.ndim == 2:
    base = np.repeat(base[..., None], 3, axis=-1)
  heatmap = np.asarray(heatmap, np.float32)
  if heatmap.ndim != 2:
    raise ValueError(f"a heat map is [H', W'], got shape {heatmap.shape}")
  h, w = base.shape[:2]
  if heatmap.shape != (h, w):
    heatmap = np.asarray(jax.image.resize(heatmap, (h, w), "bilinear"))
  low = float(heatmap.min()) if vmin is None else vmin
  high = float(heatmap.max()) if vmax is None else vmax
  scaled = np.clip((heatmap - low) / max(high - low, 1e-12), 0.0, 1.0)
  coloured = matplotlib.colormaps[cmap](scaled)[..., :3]
  return np.clip((1.0 - alpha) * base + alpha * coloured, 0.0, 1.0)


def plot_heatmap_overlay(image, heatmap, path, title=None, alpha=0.5,
                         cmap="jet", heatmap_label="heat"):
  """Three panels: the image, the heat map at its own resolution (with a
  colorbar) and `overlay_heatmap` of the two: 1200 x 450 pixels."""
  heatmap = np.asarray(heatmap, np.float32)
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
  _show_image(axes[0], image, f"image {tuple(np.shape(image)[:2])}")
  picture = axes[1].imshow(heatmap, cmap=cmap, interpolation="nearest")
  axes[1].set_title(f"{heatmap_label} {heatmap.shape}", fontsize=9)
  axes[1].set_xlabel("x")
  axes[1].set_ylabel("y")
  fig.colorbar(picture, ax=axes[1], fraction=0.046, pad=0.04,
               label=heatmap_label)
  axes[2].imshow(overlay_heatmap(image, heatmap, alpha, cmap),
                 interpolation="nearest")
  axes[2].set_title(f"overlay (alpha {alpha})", fontsize=9)
  axes[2].set_xticks([])
  axes[2].set_yticks([])
  fig.suptitle(title or "Heat map over the image")
  fig.tight_layout()
  return _save(fig, path)


def plot_saliency(images, saliency_maps, path, titles=None, title=None):
  """Per example (column): the image, its saliency map and the overlay.

  Each saliency map has its own colorbar (gradient magnitudes are not
  comparable between examples). Size: 2.5 * N x 7.5 inches (N examples):
  2000 x 750 pixels for 8.
  """
  n = len(images)
  fig, axes = plt.subplots(3, n, figsize=(2.5 * n, 7.5), squeeze=False)
  for i in range(n):
    _show_image(axes[0, i], images[i], titles[i] if titles else f"#{i}")
    picture = axes[1, i].imshow(saliency_maps[i], cmap="hot",
                                interpolation="nearest")
    axes[1, i].set_xticks([])
    axes[1, i].set_yticks([])
    fig.colorbar(picture, ax=axes[1, i], fraction=0.046, pad=0.04)
    axes[2, i].imshow(overlay_heatmap(images[i], saliency_maps[i], 0.6,
                                      "hot"), interpolation="nearest")
    axes[2, i].set_xticks([])
    axes[2, i].set_yticks([])
  axes[0, 0].set_ylabel("input")
  axes[1, 0].set_ylabel("|d logit / d pixel|")
  axes[2, 0].set_ylabel("overlay")
  fig.suptitle(title or "Saliency: gradient of the predicted class's logit "
               "w.r.t. the input pixels")
  fig.tight_layout()
  return _save(fig, path)
