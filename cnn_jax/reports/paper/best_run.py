"""The figures of the paper's best run, from its final checkpoint
(restored_run), by task:

  classification  confusion matrix (whole test split re-evaluated), example
                  predictions, Grad-CAM heat maps of the predicted class
  multilabel      Grad-CAM heat maps of each image's first true label
  segmentation    true and predicted masks over test images

Heat maps use heatmaps.grad_cam at the model's last feature-map layer; they
and the masks are of the first HEATMAP_COUNT test images. A best run
without a checkpoint, or one that cannot be restored, gives no figures and
a note saying why; the paper is still written.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data import augment
from cnn_jax.reports import heatmaps
from cnn_jax.reports import restored_run
from cnn_jax.reports.paper import collect
from cnn_jax.reports.paper import figures
from cnn_jax.reports.paper import latex
from cnn_jax.runs import checkpoint
from cnn_jax.training import steps

HEATMAP_COUNT = 6


def _first_images(restored):
  """(uint8 images [n, H, W, C], labels, normalised images, model, logits)
  of the first HEATMAP_COUNT test images."""
  test = restored.splits["test"]
  picks = np.arange(min(HEATMAP_COUNT, len(test)))
  raw = np.asarray(test.images[picks])
  normalized = augment.normalize(jnp.asarray(raw), restored.mean,
                                 restored.std)
  model = steps.create_model(restored.config.model)
  logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(
      restored.variables, normalized))
  return raw, np.asarray(test.labels[picks]), normalized, model, logits


def _grad_cam_figure(restored, units, titles, path, label, what):
  """Grad-CAM of output unit units[i] over test image i, at the last layer
  whose output is a feature map; None when the model has none."""
  raw, _, normalized, model, _ = _first_images(restored)
  layers = heatmaps.spatial_layers(model, restored.variables, normalized[:1])
  if not layers:
    return None
  maps = np.asarray(heatmaps.grad_cam(model, restored.variables, normalized,
                                      layers[-1], np.asarray(units)))
  return figures.plot_heatmaps(raw, maps, titles, path, label,
                               latex.escape(layers[-1]), what)


def _names(restored, count):
  names = (restored.splits["test"].class_names or
           restored.splits["train"].class_names)
  return [str(c) for c in (names or range(count))]


def _classification(restored, folder, label, made, notes):
  logits, _ = restored_run.predict(restored)
  test = restored.splits["test"]
  labels = np.asarray(test.labels)
  names = _names(restored, logits.shape[-1])
  made.append(figures.plot_confusion(
      figures.confusion_matrix(labels, logits), names,
      f"{folder}/figures/confusion.pdf", label))
  if len(test.example_shape) != 3:  # not images [H, W, C]
    return
  made.append(figures.plot_examples(np.asarray(test.images), labels, logits,
                                    names, f"{folder}/figures/examples.pdf",
                                    label))
  _, first_labels, _, _, first_logits = _first_images(restored)
  predicted = first_logits.argmax(-1)
  titles = [f"{names[y]}>{names[p]}" for y, p in zip(first_labels,
                                                        predicted)]
  heat = _grad_cam_figure(restored, predicted, titles,
                          f"{folder}/figures/heatmaps.pdf", label,
                          "the predicted class (titled true$>$predicted)")
  if heat is None:
    notes.append("no heat maps: the best run's model has no feature-map "
                 "layer")
  else:
    made.append(heat)


def _multilabel(restored, folder, label, made, notes):
  _, labels, _, _, logits = _first_images(restored)
  names = _names(restored, logits.shape[-1])
  units = [int(np.flatnonzero(y)[0]) if np.any(y) else int(np.argmax(p))
           for y, p in zip(labels, logits)]
  probabilities = 1.0 / (1.0 + np.exp(-logits))
  titles = [f"{names[u]} p={probabilities[i, u]:.2f}"
            for i, u in enumerate(units)]
  heat = _grad_cam_figure(restored, units, titles,
                          f"{folder}/figures/heatmaps.pdf", label,
                          "each image's first true label (titled with its "
                          "predicted probability)")
  if heat is None:
    notes.append("no heat maps: the best run's model has no feature-map "
                 "layer")
  else:
    made.append(heat)


def _segmentation(restored, folder, label, made, notes):
  del notes
  raw, labels, _, _, logits = _first_images(restored)
  k = logits.shape[-1]
  predicted = logits.argmax(-1)
  panels = [(heatmaps.mask_overlay(image, true, k),
             heatmaps.mask_overlay(image, guess, k))
            for image, true, guess in zip(raw, labels, predicted)]
  made.append(figures.plot_masks(panels, f"{folder}/figures/masks.pdf",
                                 label))


_BY_TASK = {"classification": _classification, "multilabel": _multilabel,
            "segmentation": _segmentation}


def best_run_figures(groups, folder, notes):
  """[figures.Figure] of the best group's best run, written into
  `folder`/figures; appends to `notes` what was left out and why."""
  group = collect.best_group(groups)
  run = group.best_run()
  task = run.config.get("task", "classification")
  if task not in _BY_TASK:
    notes.append(f"no figures of the best run: its task {task} has none "
                 "here")
    return []
  if not checkpoint.saved_steps(run.path):
    notes.append(f"no figures of the best run: {run.path} has no "
                 "checkpoint")
    return []
  made = []
  label = f"{latex.escape(group.label)}, {latex.escape(run.name)}"
  try:
    restored = restored_run.load_run(run.path)
    _BY_TASK[task](restored, folder, label, made, notes)
  except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
    notes.append(f"no figures of the best run: {run.path} could not be "
                 f"re-evaluated ({e})")
  return made
