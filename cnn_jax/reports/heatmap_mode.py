"""launch.py --mode=heatmap: a checkpoint's heat maps (CAM / Grad-CAM) or
predicted masks over the first test images, as PNGs.

`heatmap_arrays` computes what the pictures show on every device of the
process, as a run evaluates (config.mesh, distributed/mesh.py): the images
split along the mesh's 'data' axis, the variables replicated. The model
runs in eval mode, where examples are independent, so the maps equal one
device's up to float rounding. `write_heatmaps` draws them
(reports/heatmaps.py).
"""

import dataclasses
import functools
import os
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data import augment
from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.reports import heatmaps
from cnn_jax.reports import visualize_model
from cnn_jax.runs import workdirs


@dataclasses.dataclass
class HeatmapArrays:
  """What write_heatmaps draws for N images with K outputs."""

  logits: np.ndarray  # [N, K] (segmentation: [N, H, W, K])
  units: List[List[int]]  # per image, the output units drawn (not seg.)
  maps: Dict[Tuple[int, int], np.ndarray]  # (image, unit) -> [h, w]
  where: str  # 'CAM at norm5', 'Grad-CAM at denseblock2', ''


def on_mesh(mesh, fn, variables, *rows):
  """fn(variables, *rows) jitted on `mesh`: variables replicated, every
  array of `rows` [N, ...] split along 'data' (padded to a multiple of the
  device count with copies of its last row, cut off again): numpy [N, ...].
  fn must treat examples independently (eval mode)."""
  count = len(rows[0])
  pad = -count % mesh.shape[mesh_lib.DATA]
  rows = [np.asarray(r) for r in rows]
  if pad:
    rows = [np.concatenate([r, np.repeat(r[-1:], pad, axis=0)]) for r in rows]
  on_data = mesh_lib.batch_sharding(mesh)
  out = jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh),
                                  *[on_data] * len(rows)),
                out_shardings=on_data)(variables, *rows)
  return np.asarray(out)[:count]


def _classes_to_show(task_name, probs, labels, top):
  """Per example the output units to draw: multi-label: the true labels, else
  the `top` most probable; classification: the true and predicted class."""
  chosen = []
  for p, y in zip(probs, labels):
    if task_name == "multilabel":
      units = list(np.flatnonzero(y)) or [int(np.argmax(p))]
    else:
      units = list(dict.fromkeys([int(y), int(np.argmax(p))]))
    chosen.append(units[:top])
  return chosen


def heatmap_arrays(config, variables, images, labels, task_name, mesh,
                   method="auto", layer="", top=4):
  """HeatmapArrays of normalised `images` [N, H, W, C] with `labels`.

  method 'cam' (DenseNet-style GAP + dense models), 'gradcam' (any model;
  `layer` = a module path, empty: the last feature-map layer), or 'auto'
  (CAM where the model allows it, else Grad-CAM); segmentation: only the
  logits.
  """
  from cnn_jax.training import steps  # pylint: disable=g-import-not-at-top
  model = steps.create_model(config.model)
  apply = functools.partial(model.apply, train=False)
  logits = on_mesh(mesh, apply, variables, images)
  if task_name == "segmentation":
    return HeatmapArrays(logits, [], {}, "")
  model_name = config.model.name
  cam_head = next((v for k, v in heatmaps.CAM_HEADS.items()
                   if model_name.startswith(k)), None)
  if method == "auto":
    method = "cam" if cam_head else "gradcam"
  if method == "cam" and not cam_head:
    raise ValueError(f"CAM needs a global-average-pool + dense model "
                     f"({', '.join(heatmaps.CAM_HEADS)}); config.model.name="
                     f"{model_name!r}: use --heatmap_method=gradcam")
  probs = (jax.nn.sigmoid(logits) if task_name == "multilabel"
           else jax.nn.softmax(logits, -1))
  units = _classes_to_show(task_name, np.asarray(probs), labels, top)
  flat = [(i, u) for i in range(len(images)) for u in units[i]]
  if method == "cam":
    feature_layer, feature_fn, head = cam_head
    cams = on_mesh(mesh, lambda v, x: heatmaps.cam(
        model, v, x, layer or feature_layer, feature_fn, head),
                   variables, images)
    maps = {(i, u): cams[i, :, :, u] for i, u in flat}
    return HeatmapArrays(logits, units, maps,
                         f"CAM at {layer or feature_layer}")
  layer = layer or heatmaps.spatial_layers(model, variables, images[:1])[-1]
  grads = on_mesh(mesh, lambda v, x, c: heatmaps.grad_cam(model, v, x, layer,
                                                          c),
                  variables, np.asarray(images)[[i for i, _ in flat]],
                  np.array([u for _, u in flat], np.int32))
  return HeatmapArrays(logits, units, dict(zip(flat, grads)),
                       f"Grad-CAM at {layer}")


def write_heatmaps(config, workdir, step=None, method="auto", layer="",
                   count=8, top=4):
  """PNGs of the first `count` test images into a new folder of `workdir`.

  Classification / multi-label: per image one PNG with the input and, for
  each true label (multi-label) or the true and predicted class, the heat map
  over the input (heatmap_arrays: `method`, `layer`). Segmentation: per
  image the input, the true mask and the predicted mask.

  Returns:
    (folder, [PNG paths]).
  """
  from cnn_jax.tasks import task_for_run  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import resume  # pylint: disable=g-import-not-at-top
  if method not in heatmaps.METHODS:
    raise ValueError(f"--heatmap_method={method!r} is not one of: "
                     f"{', '.join(heatmaps.METHODS)}")
  mesh = mesh_lib.run_mesh(config)  # every device of this process
  state, train_set, test_set, mean, std = resume.restore_for_evaluation(
      config, workdir, step, sharding=mesh_lib.replicated(mesh))
  task = task_for_run(config, train_set)
  count = min(count, len(test_set))
  raw = np.asarray(test_set.images[np.arange(count)])
  labels = np.asarray(test_set.labels[np.arange(count)])
  images = np.asarray(augment.normalize(jnp.asarray(raw), mean, std))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  arrays = heatmap_arrays(config, variables, images, labels, task.name, mesh,
                          method, layer, top)
  folder = workdirs.new_result_path(
      workdir, "heatmaps", f"heatmaps_step{int(state.step)}")
  os.makedirs(folder)
  logits = arrays.logits
  names = test_set.class_names or tuple(str(k)
                                        for k in range(logits.shape[-1]))
  if task.name == "segmentation":
    return folder, _draw_masks(raw, labels, logits, names, folder)
  probs = np.asarray(jax.nn.sigmoid(logits) if task.name == "multilabel"
                     else jax.nn.softmax(logits, -1))
  paths = []
  for i in range(count):
    panels, titles = [raw[i]], ["input"]
    for u in arrays.units[i]:
      heat = np.maximum(arrays.maps[(i, u)], 0.0)
      panels.append(visualize_model.overlay_heatmap(raw[i], heat,
                                                    alpha=0.5, vmin=0.0))
      titles.append(f"{names[u]}: p={float(probs[i, u]):.2f}")
    paths.append(heatmaps.plot_panels(
        panels, titles, os.path.join(folder, f"example{i:03d}.png"),
        f"{arrays.where} (map {heat.shape[0]}x{heat.shape[1]})"))
  return folder, paths


def _draw_masks(raw, labels, logits, names, folder):
  """Per image: the input, the true and the predicted mask: PNG paths."""
  predicted = logits.argmax(-1)
  num_classes = logits.shape[-1]
  colours = heatmaps.mask_colours(num_classes)
  paths = []
  for i, image in enumerate(raw):
    right = float(np.mean(predicted[i] == labels[i]))
    shown = sorted(set(np.unique(labels[i])) | set(np.unique(predicted[i])))
    paths.append(heatmaps.plot_panels(
        [image, heatmaps.mask_overlay(image, labels[i], num_classes),
         heatmaps.mask_overlay(image, predicted[i], num_classes)],
        ["input", "true mask", f"predicted ({right:.1%} pixels right)"],
        os.path.join(folder, f"example{i:03d}.png"),
        legend=[(names[k], colours[k]) for k in shown if k > 0]))
  return paths
