"""Padding and stride: output sizes, and how the receptive field grows.

  python -m experiments.lecture.padding_stride [--out=DIR] [--smoke]

The output size of a convolution or pooling along one axis is
floor((n + p_lo + p_hi - d (k - 1) - 1) / s) + 1 (cnn_jax.ops.output_size);
each case in the table is also run through ops.cross_correlation and the
shape it returns compared. The receptive field of a stack follows
r_l = r_{l-1} + d_l (k_l - 1) j_{l-1}, j_l = j_{l-1} s_l (j: the stride of
layer l's grid in input pixels); it is also measured, as the extent of the
input pixels a centre output unit's gradient reaches. Writes
receptive_field.png, effective_receptive_field.png and result.md, in
seconds.
"""

import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from cnn_jax import ops  # pylint: disable=g-import-not-at-top
from experiments.lecture import common  # pylint: disable=g-import-not-at-top

NAME = "padding_stride"
TITLE = "5. Padding and stride: output sizes and receptive fields"

# (input n, kernel k, padding, stride, dilation, what it is)
CASES = [
    (28, 3, "valid", 1, 1, "3x3 conv, no padding: shrinks by k-1"),
    (28, 3, "same", 1, 1, "3x3 conv, 'same' (p=1): size kept"),
    (28, 5, 2, 1, 1, "5x5 conv, p=2: size kept"),
    (28, 3, "full", 1, 1, "3x3 conv, 'full' (p=k-1): grows by k-1"),
    (28, 2, "valid", 2, 1, "2x2 max-pool, stride 2: halves"),
    (28, 3, "same", 2, 1, "3x3 conv, stride 2, 'same': ceil(n/2)"),
    (32, 3, 1, 2, 1, "3x3 conv, stride 2, p=1 (ResNet downsampling)"),
    (32, 3, "valid", 1, 2, "3x3 conv, dilation 2 (extent 5)"),
    (224, 7, 3, 2, 1, "ResNet stem: 7x7, stride 2, p=3"),
    (112, 3, 1, 2, 1, "ResNet stem max-pool: 3x3, stride 2, p=1"),
    (224, 11, 2, 4, 1, "AlexNet conv1: 11x11, stride 4, p=2"),
    (227, 11, "valid", 4, 1, "AlexNet conv1 as in the paper (227 input)"),
    (5, 3, 1, 2, 1, "5x5 input, 3x3, p=1, stride 2"),
]

# Layer stacks (kernel, stride, dilation) per layer for the receptive field.
STACKS = {
    "3x3 convs, stride 1": [(3, 1, 1)] * 8,
    "3x3 conv + 2x2 pool (VGG-like)": [(3, 1, 1), (2, 2, 1)] * 4,
    "3x3 convs, stride 2 every other": [(3, 1, 1), (3, 2, 1)] * 4,
    "3x3 convs, dilation 1, 2, 4, ...": [(3, 1, 2 ** i) for i in range(8)],
    "ResNet stem (7x7/2, pool 3x3/2) + 3x3s": [(7, 2, 1), (3, 2, 1)] + [
        (3, 1, 1)] * 6,
}


def receptive_field(stack):
  """[(r_l, j_l)] after each layer of `stack` [(k, s, d)]: r_0 = 1, j_0 = 1."""
  r, j, out = 1, 1, []
  for k, s, d in stack:
    r += d * (k - 1) * j
    j *= s
    out.append((r, j))
  return out


def measured_receptive_field(stack, size):
  """Extent (pixels) of the input that reaches the centre output unit of the
  stack, measured from its gradient: all-ones kernels (no cancellation),
  'valid' padding, pooling as averaging (the same window). Also returns the
  gradient map [size, size]."""

  def network(x):
    for k, s, d in stack:
      x = ops.cross_correlation(x, jnp.ones((k, k, 1, 1)) / (k * k),
                                stride=s, dilation=d)
    h, w = x.shape[1:3]
    return x[0, h // 2, w // 2, 0]

  # Compiled once per stack (op by op, every layer's gradient would compile
  # on its own).
  grad = np.asarray(jax.jit(jax.grad(network))(jnp.zeros((1, size, size, 1))))
  grad = grad[0, ..., 0]
  rows = np.flatnonzero(np.abs(grad).sum(axis=1) > 0)
  return int(rows.max() - rows.min() + 1), grad


def output_size_rows():
  rows, mismatches = [], 0
  for n, k, padding, stride, dilation, what in CASES:
    expected = ops.output_size(n, k, padding, stride, dilation)
    y = ops.cross_correlation(jnp.zeros((1, n, n, 1)), jnp.zeros((k, k, 1, 1)),
                              stride=stride, padding=padding,
                              dilation=dilation)
    measured = y.shape[1]
    mismatches += measured != expected
    rows.append((what, n, k, str(padding), stride, dilation, expected,
                 measured))
  return rows, mismatches


def plot_receptive_fields(curves, path):
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for i, (name, (formula, measured)) in enumerate(curves.items()):
    depth = np.arange(1, len(formula) + 1)
    ax.plot(depth, formula, "-", color=f"C{i}", label=f"{name}")
    ax.plot(depth[-len(measured):], measured, "o", color=f"C{i}",
            markerfacecolor="none")
  ax.set_yscale("log", base=2)
  ax.set_xlabel("layers (convolutions and poolings)")
  ax.set_ylabel("receptive field (input pixels per side, log scale)")
  ax.set_title("Receptive-field growth: lines = formula, circles = measured "
               "from gradients")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_effective_fields(maps, path):
  fig, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps) + 1, 5),
                           squeeze=False)
  for ax, (depth, grad) in zip(axes[0], maps.items()):
    picture = ax.imshow(grad / grad.max(), cmap="magma", vmin=0, vmax=1)
    centre, rf = grad.shape[0] // 2, 2 * depth + 1
    ax.add_patch(plt.Rectangle(
        (centre - depth - 0.5, centre - depth - 0.5), rf, rf, fill=False,
        edgecolor="cyan", linestyle="--", label="theoretical RF"))
    ax.set_title(f"{depth} layer{'s' if depth > 1 else ''} of 3x3: "
                 f"RF {rf} px", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("input x")
    ax.set_ylabel("input y")
  fig.colorbar(picture, ax=axes[0].tolist(), shrink=0.8,
               label="|d centre output / d input| (relative)")
  fig.suptitle("Where a centre unit looks: its gradient over the input "
               "(effective receptive field, peaked in the middle)")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(out, smoke=False):
  started = common.clock()
  os.makedirs(out, exist_ok=True)
  rows, mismatches = output_size_rows()
  if mismatches:
    raise AssertionError(f"{mismatches} output sizes differ between "
                         "ops.output_size and ops.cross_correlation")

  curves, stack_rows = {}, []
  for name, stack in STACKS.items():
    layers = stack[:4] if smoke else stack
    formula = [r for r, _ in receptive_field(layers)]
    size = formula[-1] + 8
    # Smoke settings measure the whole stack only, full ones every depth.
    depths = [len(layers)] if smoke else range(1, len(layers) + 1)
    measured = [measured_receptive_field(layers[:depth], size)[0]
                for depth in depths]
    if measured != [formula[depth - 1] for depth in depths]:
      raise AssertionError(f"{name}: measured receptive fields {measured} "
                           f"differ from the formula {formula}")
    curves[name] = (formula, measured)
    stack_rows.append((name, len(layers), formula[-1],
                       receptive_field(layers)[-1][1]))
  plot_receptive_fields(curves, os.path.join(out, "receptive_field.png"))

  depths = (1, 2, 4) if smoke else (1, 4, 16)
  maps = {d: measured_receptive_field([(3, 1, 1)] * d, 2 * max(depths) + 9)[1]
          for d in depths}
  plot_effective_fields(maps, os.path.join(out,
                                           "effective_receptive_field.png"))
  deepest = maps[depths[-1]]
  centre = deepest.shape[0] // 2
  half = depths[-1]  # the RF spans centre +- depth
  inner = deepest[centre - half // 2:centre + half // 2 + 1,
                  centre - half // 2:centre + half // 2 + 1].sum()
  inner_share = float(inner / deepest.sum())
  inner_side, outer_side = 2 * (half // 2) + 1, 2 * half + 1

  plain = dict((s[0], s[2]) for s in stack_rows)
  finding = (f"All {len(rows)} output sizes from floor((n+2p-k)/s)+1 "
             "(ops.output_size) match the shapes ops.cross_correlation "
             "returns, and every measured receptive field equals the "
             f"formula: after {len(STACKS['3x3 convs, stride 1'][:4 if smoke else 8])} layers "
             f"3x3 convs see {plain['3x3 convs, stride 1']} px, with 2x2 "
             f"pools in between {plain['3x3 conv + 2x2 pool (VGG-like)']} px, "
             f"with doubling dilation {plain['3x3 convs, dilation 1, 2, 4, ...']}"
             f" px. The effective field is peaked: for {depths[-1]} 3x3 "
             f"layers the central {inner_side}x{inner_side} px of the "
             f"{outer_side}x{outer_side} field carry {inner_share:.0%} of "
             "the gradient.")
  body = [
      "## Output sizes", "",
      "Along each axis `out = floor((n + p_lo + p_hi - d(k-1) - 1) / s) + 1`;"
      " 'same' pads just enough for ceil(n / s) (the extra pixel on the high "
      "side, as XLA/TF), 'full' pads k-1 on each side. 'formula' is "
      "`ops.output_size`, 'measured' the shape `ops.cross_correlation` "
      "returns.", "",
      common.markdown_table(("case", "n", "k", "padding", "stride",
                             "dilation", "formula", "measured"), rows), "",
      "## Receptive field", "",
      "`r_l = r_(l-1) + d_l (k_l - 1) j_(l-1)` and `j_l = j_(l-1) s_l`: each "
      "layer adds (k-1) steps of the current grid spacing j, and a stride "
      "multiplies j. Measured: the rows of the input with non-zero gradient "
      "of the centre output unit (all-ones kernels, pooling as averaging).",
      "",
      common.markdown_table(("stack", "layers", "receptive field (px)",
                             "final grid spacing j (px)"), stack_rows), "",
      "![receptive field growth](receptive_field.png)", "",
      "The gradient of a centre unit over its receptive field is far from "
      "uniform: for a stack of 3x3 convs it is a binomial (near-Gaussian) "
      "bump, so the *effective* receptive field grows like sqrt(depth) while "
      "the theoretical one grows linearly (Luo et al., 2016).", "",
      "![effective receptive field](effective_receptive_field.png)",
  ]
  return common.write_result(out, NAME, TITLE, finding, body, started)


if __name__ == "__main__":
  raise SystemExit(common.main(NAME, __doc__, run))
