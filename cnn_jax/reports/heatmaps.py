"""Where a network looks: class activation maps (CAM), Grad-CAM, and PNG
overlays of heat maps and segmentation masks.

Pure functions of (model, variables, images):
  capture(...)                   logits and one layer's activation [B, h, w, C]
  class_activation_map(F, W, b)  CAM: the head weights applied at every
                                 position of the last feature map (Zhou et al.,
                                 2016): M[b, i, j, l] = sum_c F[b, i, j, c] W[c, l]
  cam(...)                       that for a GAP + dense model (DenseNet)
  grad_cam(...)                  Grad-CAM (Selvaraju et al., 2017) at any layer

For a global-average-pool + linear head, CAM is exact: the mean of the map
over the positions, plus the bias, is the logit (tests check the identity).
Grad-CAM needs no particular head: it weights each channel c of a layer's
activation A by the spatial mean of d logit / d A[..., c] and keeps the
positive part of the weighted sum. The gradient with respect to an
intermediate activation is taken without changing the model: a
`flax.linen.intercept_methods` hook adds a zero array `delta` to the output of
the chosen module, and jax.vjp differentiates the logits with respect to
`delta`. Layers are named by their module path, '/'-joined, e.g. 'norm5',
'denseblock2/denselayer3/conv2', 'down1/conv_bn_relu2'.

`launch.py --mode=heatmap` (reports/heatmap_mode.py) restores a checkpoint
and draws these maps, on every device of the process.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from cnn_jax.reports import plotting

matplotlib.use("Agg")
import matplotlib.patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

METHODS = ("auto", "cam", "gradcam")
# GAP + dense models CAM knows: model-name prefix -> (feature layer, the
# function the model applies to it before pooling, head module).
CAM_HEADS = {"densenet": ("norm5", nn.relu, "classifier")}


# --- activations and gradients at a named layer ------------------------------


def _path(module):
  return "/".join(module.path)


def shares_parent_scope(module) -> bool:
  """Whether `module` works inside its parent's scope (nn.share_scope, as
  layers.ConvReluMaxPool's conv): it has the parent's path and is a part of
  that layer, not a layer of its own."""
  parent = module.parent
  return isinstance(parent, nn.Module) and parent.scope is module.scope


def _run_probed(model, variables, images, layer, delta=None):
  """(logits, activation of `layer`, every module path seen), in eval mode;
  with `delta`, the layer's output is replaced by output + delta."""
  found, seen = [], []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name != "__call__"
        or shares_parent_scope(context.module)):
      return out
    path = _path(context.module)
    seen.append(path)
    if path == layer:
      found.append(out)
      if delta is not None:
        out = out + delta.astype(out.dtype)
    return out

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, images, train=False)
  if layer is not None and len(found) != 1:
    if not found:
      spatial = ", ".join(p for p in dict.fromkeys(seen) if p)
      raise ValueError(f"layer {layer!r} is not a module of "
                       f"{type(model).__name__}; its modules: {spatial}")
    raise ValueError(f"layer {layer!r} is called {len(found)} times in one "
                     "forward pass; choose a module called once")
  return logits, (found[0] if found else None), seen


def spatial_layers(model, variables, images):
  """Paths of the modules whose output is a feature map [B, h, w, C] with
  h, w > 1, in call order (candidates for Grad-CAM)."""
  paths = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__"
        and not shares_parent_scope(context.module) and hasattr(out, "ndim")
        and out.ndim == 4 and out.shape[1] > 1 and out.shape[2] > 1):
      paths.append(_path(context.module))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(functools.partial(model.apply, train=False), variables,
                   images)
  return [p for p in dict.fromkeys(paths) if p]


def capture(model, variables, images, layer):
  """(logits, activation [B, h, w, C]) of module `layer` in eval mode."""
  logits, activation, _ = _run_probed(model, variables, images, layer)
  return logits, activation


def layer_gradient(model, variables, images, layer, classes):
  """(activation A, gradient d logit[b, classes[b]] / d A) at `layer`.

  Args:
    classes: int [B], the output unit per example (for multi-label models
      the label, for classifiers the class).
  Returns:
    (A, dA), both of the layer's output shape [B, h, w, C].
  """
  shape = jax.eval_shape(
      lambda: capture(model, variables, images, layer)[1])
  zero = jnp.zeros(shape.shape, jnp.float32)

  def logits_and_activation(delta):
    logits, activation, _ = _run_probed(model, variables, images, layer, delta)
    return logits, jax.lax.stop_gradient(activation)

  (logits, activation), vjp = jax.vjp(logits_and_activation, zero)
  # Examples are independent in eval mode, so the gradient of the sum of the
  # chosen logits is, example by example, the gradient of each one.
  cotangent = jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype)
  (gradient,) = vjp((cotangent, jnp.zeros_like(activation)))
  return activation, gradient


# --- CAM and Grad-CAM --------------------------------------------------------


def class_activation_map(features, kernel, bias=None):
  """CAM [B, h, w, L] = features [B, h, w, C] @ kernel [C, L] (+ bias [L]).

  With the bias, the spatial mean of the map is exactly the logit of a
  global-average-pool + dense head on these features; without it (the usual
  picture) it differs from the logit by the constant bias.
  """
  maps = jnp.einsum("bhwc,cl->bhwl", features.astype(jnp.float32),
                    kernel.astype(jnp.float32))
  return maps if bias is None else maps + bias.astype(jnp.float32)


def cam(model, variables, images, feature_layer="norm5", feature_fn=nn.relu,
        head="classifier"):
  """CAM [B, h, w, L] (no bias) of a model that ends in
  feature_fn(feature_layer's output) -> global average pool -> dense `head`,
  as DenseNet does (norm5 -> ReLU -> pool -> classifier)."""
  logits, features = capture(model, variables, images, feature_layer)
  del logits
  params = variables["params"]
  if head not in params or "kernel" not in params[head]:
    raise ValueError(f"{type(model).__name__} has no dense head {head!r} "
                     f"(top-level params: {', '.join(params)})")
  if feature_fn is not None:
    features = feature_fn(features)
  return class_activation_map(features, params[head]["kernel"])


def grad_cam(model, variables, images, layer, classes, elementwise=False):
  """Grad-CAM [B, h, w] at module `layer` for the output units `classes` [B].

    alpha[b, c] = mean_ij dy / dA[b, i, j, c]
    map[b, i, j] = relu(sum_c alpha[b, c] A[b, i, j, c])

  elementwise=True gives HiResCAM (Draelos & Carin, 2020),
  relu(sum_c dy/dA * A) without the spatial averaging of the gradient: it
  follows the gradient's own location (for a global-average-pool + dense
  head it is the CAM divided by h * w).
  """
  activation, gradient = layer_gradient(model, variables, images, layer,
                                        jnp.asarray(classes))
  activation = activation.astype(jnp.float32)
  if elementwise:
    return nn.relu(jnp.sum(gradient * activation, axis=-1))
  weights = jnp.mean(gradient, axis=(1, 2), keepdims=True)
  return nn.relu(jnp.sum(weights * activation, axis=-1))


def upsample(maps, size):
  """[B, h, w] -> [B, H, W] (bilinear; size = (H, W))."""
  maps = jnp.asarray(maps, jnp.float32)
  return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


# --- pictures ----------------------------------------------------------------


def mask_colours(num_classes):
  """RGB [num_classes, 3]: the colour of each class k >= 1 in mask overlays
  (row 0, the background, is unused)."""
  cmap = matplotlib.colormaps["tab20" if num_classes > 11 else "tab10"]
  return np.asarray([cmap((k - 1) % cmap.N)[:3] for k in range(num_classes)])


def mask_overlay(image, mask, num_classes, alpha=0.6):
  """RGB float [H, W, 3] in [0, 1]: class k > 0 of `mask` [H, W] painted in
  mask_colours(num_classes)[k] over `image` [H, W, C]; class 0 (background)
  leaves the image as it is."""
  base = plotting.displayable(image)
  if base.ndim == 2:
    base = np.repeat(base[..., None], 3, axis=-1)
  mask = np.asarray(mask)
  painted = mask_colours(num_classes)[np.clip(mask, 0, num_classes - 1)]
  blend = (1.0 - alpha) * base + alpha * painted
  return np.where((mask > 0)[..., None], blend, base)


def plot_panels(panels, titles, path, suptitle=None, legend=()):
  """One row of images (RGB/gray floats or uint8) with titles -> PNG;
  `legend`: (name, RGB colour) pairs drawn below the row."""
  fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8),
                           squeeze=False)
  for ax, panel, title in zip(axes[0], panels, titles):
    ax.imshow(plotting.displayable(panel),
              cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  if legend:
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in legend]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles),
               fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.14, top=0.88 if suptitle else 0.9)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
