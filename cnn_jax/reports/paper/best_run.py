"""The figures of the paper's best run, from its final checkpoint
re-evaluated on the whole test split (restored_run): the confusion matrix,
example predictions and, for image classifiers, Grad-CAM heat maps of the
predicted class (heatmaps.grad_cam at the model's last feature-map layer).

A best run that is not a classifier, has no checkpoint, or cannot be
restored gives no figures and a note saying why; the paper is still
written.
"""

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


def _heatmap_figure(restored, images, labels, logits, names, path, label):
  """Grad-CAM of the predicted class for the first HEATMAP_COUNT test
  images, at the last layer whose output is a feature map."""
  picks = np.arange(min(HEATMAP_COUNT, len(images)))
  raw = images[picks]
  normalized = augment.normalize(jnp.asarray(raw), restored.mean,
                                 restored.std)
  model = steps.create_model(restored.config.model)
  layers = heatmaps.spatial_layers(model, restored.variables, normalized[:1])
  if not layers:
    return None
  predicted = np.asarray(logits[picks]).argmax(-1)
  maps = np.asarray(heatmaps.grad_cam(model, restored.variables, normalized,
                                      layers[-1], predicted))
  names = [str(c) for c in (names or range(int(logits.shape[-1])))]
  titles = [f"{names[labels[i]]}>{names[predicted[n]]}"
            for n, i in enumerate(picks)]
  return figures.plot_heatmaps(raw, maps, titles, path, label,
                               latex.escape(layers[-1]))


def best_run_figures(groups, folder, notes):
  """[figures.Figure] of the best group's best run, written into
  `folder`/figures; appends to `notes` what was left out and why."""
  group = collect.best_group(groups)
  run = group.best_run()
  task = run.config.get("task", "classification")
  if task != "classification":
    notes.append(f"no confusion matrix or heat maps: the best run's task is "
                 f"{task}")
    return []
  if not checkpoint.saved_steps(run.path):
    notes.append(f"no confusion matrix: {run.path} has no checkpoint")
    return []
  try:
    restored = restored_run.load_run(run.path)
    logits, _ = restored_run.predict(restored)
  except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
    notes.append(f"no confusion matrix: the best run {run.path} could not "
                 f"be re-evaluated ({e})")
    return []
  test = restored.splits["test"]
  labels = np.asarray(test.labels)
  names = test.class_names or restored.splits["train"].class_names or None
  label = f"{latex.escape(group.label)}, {latex.escape(run.name)}"
  made = [figures.plot_confusion(
      figures.confusion_matrix(labels, logits), names,
      f"{folder}/figures/confusion.pdf", label)]
  if len(test.example_shape) == 3:  # images [H, W, C]
    images = np.asarray(test.images)
    made.append(figures.plot_examples(images, labels, logits, names,
                                      f"{folder}/figures/examples.pdf",
                                      label))
    heat = _heatmap_figure(restored, images, labels, logits, names,
                           f"{folder}/figures/heatmaps.pdf", label)
    if heat is None:
      notes.append("no heat maps: the best run's model has no feature-map "
                   "layer")
    else:
      made.append(heat)
  return made
