"""Figures of what happens inside a model (matplotlib, PNG files): the
first-layer filters, feature maps, saliency maps and heat maps over images.

Two kinds of function live here:
  * what a figure shows, computed as pure functions of arrays:
    `first_conv_kernel`, `intermediates` (every module's output, via flax's
    `capture_intermediates`), `feature_maps`, `saliency` (input gradients)
    and `overlay_heatmap` (a coarse [H', W'] map blended over an image);
  * `plot_*` functions that draw one figure into one PNG and return its path.

Figures of a run's results (curves, confusion matrix, examples) are in
visualize.py; the shared matplotlib set-up (Agg backend, `DPI`,
`png_size`) is in plotting.py. A PNG is exactly `figsize * DPI` pixels (the
sizes are given in each docstring).
"""

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from cnn_jax.reports import heatmaps
from cnn_jax.reports import plotting
# pyplot after plotting, which selects the Agg backend (no display needed).
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


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
  return plotting.save_figure(fig, path)


def _a_layer(module, method_name) -> bool:
  return (method_name == "__call__"
          and not heatmaps.shares_parent_scope(module))


def intermediates(apply_fn, variables, images, train=False):
  """{module path: output} of every module call, e.g. {'conv1': [B, H, W, C]}.

  Uses flax's `capture_intermediates`: outputs of modules only (a function
  such as `nn.relu` applied between modules is not a module, so a plain
  `Conv`'s output is taken before its activation; a `ConvReluMaxPool`,
  e.g. the simple CNN's 'conv1', gives its pooled, rectified output, not
  that of the conv inside it, which shares its path:
  heatmaps.shares_parent_scope).

  Args:
    apply_fn: a Linen module's `apply` (e.g. `state.apply_fn`).
    variables: {'params': ..., 'batch_stats': ...}.
    images: [B, H, W, C] normalised as the model was trained.
  """
  # One compiled call (eagerly, every layer would compile on its own).
  _, state = jax.jit(lambda v, x: apply_fn(
      v, x, train=train, capture_intermediates=_a_layer,
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
    plotting.show_image(fig.add_subplot(grid[0:min(rows, 2), 0]), image,
                        "input")
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
  return plotting.save_figure(fig, path)


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
  base = plotting.displayable(image)
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
  plotting.show_image(axes[0], image,
                      f"image {tuple(np.shape(image)[:2])}")
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
  return plotting.save_figure(fig, path)


def plot_saliency(images, saliency_maps, path, titles=None, title=None):
  """Per example (column): the image, its saliency map and the overlay.

  Each saliency map has its own colorbar (gradient magnitudes are not
  comparable between examples). Size: 2.5 * N x 7.5 inches (N examples):
  2000 x 750 pixels for 8.
  """
  n = len(images)
  fig, axes = plt.subplots(3, n, figsize=(2.5 * n, 7.5), squeeze=False)
  for i in range(n):
    plotting.show_image(axes[0, i], images[i],
                        titles[i] if titles else f"#{i}")
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
  return plotting.save_figure(fig, path)
