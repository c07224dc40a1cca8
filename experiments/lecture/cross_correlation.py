"""Cross-correlation vs convolution: the lecture's worked example, and the
vertical-edge kernel on real MNIST digits (cnn_jax.ops).

  python -m experiments.lecture.cross_correlation [--out=DIR] [--smoke]

Writes worked_example.png, digit_edges.png and result.md. Runs in seconds.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from cnn_jax import ops  # pylint: disable=g-import-not-at-top
from experiments.lecture import common  # pylint: disable=g-import-not-at-top

NAME = "cross_correlation"
TITLE = "1. Cross-correlation vs convolution"

# The lecture's worked example: a vertical edge, and a vertical-edge kernel.
X = np.array([[0, 0, 0, 1, 1],
              [0, 0, 0, 1, 1],
              [0, 0, 0, 1, 1],
              [0, 0, 1, 1, 1]], np.float32)
K = np.array([[-1, 1],
              [-1, 1]], np.float32)
# Valid cross-correlation of X with K, by hand: y[i, j] = sum_ab
# X[i + a, j + b] K[a, b]. The slide's last row reads [0, 1, 2, 0]; its third
# entry is -X[2,2] + X[2,3] - X[3,2] + X[3,3] = -0 + 1 - 1 + 1 = 1.
EXPECTED = np.array([[0, 0, 2, 0],
                     [0, 0, 2, 0],
                     [0, 1, 1, 0]], np.float32)
SLIDE_LAST_ROW = [0, 1, 2, 0]
HORIZONTAL = K.T  # [[-1, -1], [1, 1]]: responds to horizontal edges


def _annotated(ax, matrix, title, limit=2.0, cmap="RdBu_r"):
  """`matrix` as coloured cells with their values written in; one colour
  scale [-limit, limit] for every panel, so the shared colorbar is right."""
  image = ax.imshow(matrix, cmap=cmap, vmin=-limit, vmax=limit)
  for (i, j), value in np.ndenumerate(matrix):
    ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=12,
            color="white" if abs(value) > 0.6 * limit else "black")
  ax.set_title(title, fontsize=10)
  ax.set_xticks(range(matrix.shape[1]))
  ax.set_yticks(range(matrix.shape[0]))
  ax.set_xlabel("column j")
  ax.set_ylabel("row i")
  return image


def plot_worked_example(x, k, correlated, convolved, path):
  fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
  _annotated(axes[0], x, "input X (4x5)")
  _annotated(axes[1], k, "kernel K (2x2)")
  _annotated(axes[2], correlated,
             "cross-correlation X * K (valid, 3x4)\nwhat conv layers compute")
  image = _annotated(axes[3], convolved,
                     "convolution (K flipped in both axes)\n= -(cross-corr.) "
                     "for this K")
  fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="value")
  fig.suptitle("The lecture's worked example (cnn_jax.ops.correlate / "
               "convolve)")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_digit_edges(images, labels, path):
  """Rows: digits; columns: image, vertical-edge and horizontal-edge
  cross-correlation, and the true convolution with the vertical kernel."""
  n = len(images)
  fig, axes = plt.subplots(n, 4, figsize=(14, 3 * n + 1), squeeze=False)
  columns = ("digit", "vertical edges\ncross-corr. with [[-1,1],[-1,1]]",
             "horizontal edges\ncross-corr. with [[-1,-1],[1,1]]",
             "true convolution\nwith [[-1,1],[-1,1]]")
  for row, (image, label) in enumerate(zip(images, labels)):
    x = image[..., 0].astype(np.float32) / 255.0
    maps = [np.asarray(ops.correlate(x, K)),
            np.asarray(ops.correlate(x, HORIZONTAL)),
            np.asarray(ops.convolve(x, K))]
    axes[row, 0].imshow(x, cmap="gray", vmin=0, vmax=1)
    axes[row, 0].set_ylabel(f"label {label}")
    for col, response in enumerate(maps, start=1):
      picture = axes[row, col].imshow(response, cmap="RdBu_r", vmin=-2,
                                      vmax=2)
    for col in range(4):
      axes[row, col].set_xticks([])
      axes[row, col].set_yticks([])
      if row == 0:
        axes[row, col].set_title(columns[col], fontsize=10)
  fig.colorbar(picture, ax=axes.ravel().tolist(), shrink=0.6,
               label="response (pixels in [0, 1])")
  fig.suptitle("Edge filters on MNIST digits. Red: dark-to-bright going "
               "right (vertical kernel) or down (horizontal kernel);\n"
               "the true convolution flips the kernel, here the sign")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(out, smoke=False):
  started = common.clock()
  os.makedirs(out, exist_ok=True)
  correlated = np.asarray(ops.correlate(X, K))
  convolved = np.asarray(ops.convolve(X, K))
  if not np.array_equal(correlated, EXPECTED):
    raise AssertionError(f"ops.correlate gave {correlated.tolist()}, the "
                         f"hand computation {EXPECTED.tolist()}")
  plot_worked_example(X, K, correlated, convolved,
                      os.path.join(out, "worked_example.png"))

  test = common.mnist_splits()["test"]
  count = 2 if smoke else 4
  picks = [int(np.flatnonzero(test.labels == d)[0]) for d in (1, 7, 0, 4)]
  picks = picks[:count]
  images, labels = test.images[np.array(picks)], test.labels[picks]
  plot_digit_edges(images, labels, os.path.join(out, "digit_edges.png"))

  # On digits: how much of the response does each kernel give, and how do
  # cross-correlation and convolution relate for an antisymmetric kernel?
  x = test.images[:200 if smoke else 2000, ..., 0].astype(np.float32) / 255.
  vertical = np.stack([np.asarray(ops.correlate(d, K)) for d in x[:50]])
  flipped = np.stack([np.asarray(ops.convolve(d, K)) for d in x[:50]])
  batched = np.asarray(ops.cross_correlation(
      x[..., None], K[:, :, None, None]))[..., 0]
  sign_flip = float(np.abs(vertical + flipped).max())
  batch_gap = float(np.abs(batched[:50] - vertical).max())

  finding = (f"ops.correlate reproduces the worked example exactly: "
             f"{correlated.astype(int).tolist()}; the slide's last row "
             f"{SLIDE_LAST_ROW} is an arithmetic slip (the third entry is "
             "-0+1-1+1 = 1). The true convolution flips the kernel, which "
             "for this antisymmetric K just negates every output "
             f"(max |corr + conv| on digits = {sign_flip:g}).")
  body = [
      "## Worked example", "",
      "X (4x5), a vertical edge, and K (2x2), a vertical-edge detector:", "",
      "```", f"X = {X.astype(int).tolist()}", f"K = {K.astype(int).tolist()}",
      "```", "",
      "Valid cross-correlation `y[i, j] = sum_ab X[i+a, j+b] K[a, b]` "
      "(`ops.correlate(X, K)`, what every deep-learning 'conv' layer "
      "computes):", "",
      "```", *[str(r) for r in correlated.astype(int).tolist()], "```", "",
      f"**Correction.** The lecture slide's last row reads {SLIDE_LAST_ROW}. "
      "That is an arithmetic slip: the window at row 2, column 2 covers "
      "[[0, 1], [1, 1]], giving -0 + 1 - 1 + 1 = **1**, so the last row is "
      "[0, 1, 1, 0]. The 2s in rows 0-1 mark where the edge is a clean "
      "vertical step; in row 2 the edge steps diagonally and the response "
      "splits between two columns.", "",
      "True convolution (`ops.convolve`, kernel flipped in both axes, "
      "K -> [[1, -1], [1, -1]] = -K):", "",
      "```", *[str(r) for r in convolved.astype(int).tolist()], "```", "",
      "![worked example](worked_example.png)", "",
      "## On real digits", "",
      "The same kernel over MNIST test digits (pixels scaled to [0, 1]) "
      "lights up left edges of strokes (dark-to-bright, positive) and "
      "right edges (bright-to-dark, negative); the transposed kernel does "
      "the same for horizontal edges. The convolution with K is exactly "
      "the negated cross-correlation (max |corr + conv| = "
      f"{sign_flip:g} over 50 digits), so the choice only matters for "
      "asymmetric kernels, and a learned kernel absorbs the flip anyway.", "",
      f"The batched `ops.cross_correlation` ([B, H, W, C] x HWIO) agrees "
      f"with the per-image `ops.correlate` to {batch_gap:.1e} on "
      f"{len(vertical)} digits.", "",
      "![edges on digits](digit_edges.png)",
  ]
  return common.write_result(out, NAME, TITLE, finding, body, started)


if __name__ == "__main__":
  raise SystemExit(common.main(NAME, __doc__, run))
