"""Pooling and invariance: how stable are a CNN's predictions when test
digits move by 1-4 pixels, with and without max-pooling?

  python -m experiments.lecture.pooling_invariance [--out=DIR] [--smoke]

Two CNNs with the same convolutions (conv8-conv16, 3x3, then dense64-dense10)
are trained 2 epochs on MNIST through cnn_jax.train.train_and_evaluate, one
with 2x2 max-pooling after each conv (configs/mnist.py's simple CNN,
narrower) and one without (`pool=False`: the dense layer sees the
full-resolution maps). Neither sees shifted digits in training; a third run,
for reference, is the pooling model trained on randomly shifted digits
(crop_padding=4). Each model's final checkpoint then classifies 2,000 test
digits shifted by d = 0..4 pixels up, down, left and right (zero fill).
Reported per d: accuracy, and stability = the fraction of predictions
unchanged from the unshifted digit.

Measured: pooling keeps 91.9% of its predictions at 2 px and 53.7% at 4 px,
no pooling 88.8% and 48.3%, the pooled model trained on shifted digits
96.1% at 4 px. The three runs took 271 s, 577 s and 109 s on a 2-core CPU
shared with other jobs (load 8-15).
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from cnn_jax.data import ArrayDataset  # pylint: disable=g-import-not-at-top
from cnn_jax.reports import report  # pylint: disable=g-import-not-at-top
from cnn_jax.reports import restored_run  # pylint: disable=g-import-not-at-top
from experiments.lecture import common  # pylint: disable=g-import-not-at-top

NAME = "pooling_invariance"
TITLE = "3. Pooling and (approximate) translation invariance"
EPOCHS = 2
SHIFTS = (0, 1, 2, 3, 4)
# The third model: pooling, trained on digits shifted by up to this many
# pixels (config.data.augment.crop_padding): what data, not architecture,
# teaches.
TRAIN_SHIFT = 4
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
NUM_TEST = 2000


def shift_images(images, dy, dx):
  """[N, H, W, C] moved by (dy, dx) pixels (down/right positive), zero fill."""
  shifted = np.zeros_like(images)
  h, w = images.shape[1:3]
  src_y = slice(max(0, -dy), h - max(0, dy))
  dst_y = slice(max(0, dy), h - max(0, -dy))
  src_x = slice(max(0, -dx), w - max(0, dx))
  dst_x = slice(max(0, dx), w - max(0, -dx))
  shifted[:, dst_y, dst_x] = images[:, src_y, src_x]
  return shifted


def shifted_set(images, labels, shifts):
  """All (shift, direction) copies of the images in one ArrayDataset, and
  the list of (d, direction) in the order of the copies."""
  keys, copies = [], []
  for d in shifts:
    for name, (uy, ux) in DIRECTIONS.items():
      if d == 0 and name != "right":
        continue  # one unshifted copy
      keys.append((d, name))
      copies.append(shift_images(images, uy * d, ux * d))
  return (ArrayDataset(np.concatenate(copies), np.tile(labels, len(keys)),
                       "mnist/test_shifted"), keys)


def invariance(run, images, labels, shifts):
  """{d: (accuracy, stability)} averaged over the four directions, and the
  predictions [copies, N]."""
  dataset, keys = shifted_set(images, labels, shifts)
  logits, _ = restored_run.predict(run, dataset=dataset)
  predictions = logits.argmax(-1).reshape(len(keys), len(images))
  reference = predictions[keys.index((0, "right"))]
  table = {}
  for d in shifts:
    rows = [i for i, (dk, _) in enumerate(keys) if dk == d]
    table[d] = (float(np.mean(predictions[rows] == labels)),
                float(np.mean(predictions[rows] == reference)))
  return table, predictions, keys


def plot_curves(results, shifts, path):
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, (label, r) in enumerate(results.items()):
    axes[0].plot(shifts, [100 * r["table"][d][1] for d in shifts], "o-",
                 color=f"C{i}", label=label)
    axes[1].plot(shifts, [100 * r["table"][d][0] for d in shifts], "o-",
                 color=f"C{i}", label=label)
  axes[0].set_title("Stability: prediction unchanged by the shift")
  axes[0].set_ylabel("unchanged predictions (%)")
  axes[1].set_title("Test accuracy on shifted digits")
  axes[1].set_ylabel("accuracy (%)")
  for ax in axes:
    ax.set_xlabel("shift (pixels; mean over up, down, left, right)")
    ax.set_xticks(shifts)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Translating MNIST test digits (never shifted in training)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_examples(images, labels, results, keys, shifts, path, index):
  """One digit shifted right by each d, with each model's prediction."""
  fig, axes = plt.subplots(1, len(shifts), figsize=(2.5 * len(shifts), 3.5))
  for ax, d in zip(axes, shifts):
    copy = keys.index((d, "right"))
    ax.imshow(shift_images(images[index:index + 1], 0, d)[0, ..., 0],
              cmap="gray")
    guesses = " | ".join(f"{r['short']}: {r['predictions'][copy][index]}"
                         for r in results.values())
    ax.set_title(f"shift {d} px right\n{guesses}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"Test digit #{index} (label {labels[index]}) shifted, and "
               "each model's predicted class")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(out, smoke=False):
  started = common.clock()
  os.makedirs(out, exist_ok=True)
  epochs = 1 if smoke else EPOCHS
  base = common.mnist_config(out, smoke, epochs)
  features, hidden = ((4, 8), 16) if smoke else ((8, 16), 64)
  shifts = SHIFTS[:3] if smoke else SHIFTS
  results = {}
  variants = (("pooling (2x2 max after each conv)", "pool", True, 0),
              ("no pooling", "no pool", False, 0),
              (f"pooling + shifts up to {TRAIN_SHIFT} px in training",
               "pool+aug", True, TRAIN_SHIFT))
  for label, short, pool, train_shift in variants:
    config = common.with_model(base, name="simple_cnn", num_classes=10,
                               features=features, hidden=hidden, pool=pool,
                               dtype="float32")
    config.data.augment.crop_padding = train_shift
    tag = ("cnn_pool" if pool else "cnn_no_pool") + (
        f"_shift{train_shift}" if train_shift else "")
    workdir = os.path.join(out, "runs", tag)
    run_summary = common.train_or_reuse(config, workdir)
    restored = restored_run.load_run(workdir)
    test = restored.splits["test"]
    count = min(len(test), 200 if smoke else NUM_TEST)
    images, labels = np.asarray(test.images[:count]), test.labels[:count]
    table, predictions, keys = invariance(restored, images, labels, shifts)
    params = report.model_summary.count_params(restored.state.params)
    results[label] = {"tag": tag, "table": table, "predictions": predictions,
                      "short": short,
                      "params": params, "summary": run_summary}
  plot_curves(results, shifts, os.path.join(out, "shift_stability.png"))
  # Show a digit that the pooled model keeps and the other loses, if any.
  pooled, plain = (results[k]["predictions"] for k in list(results)[:2])
  last = keys.index((shifts[-1], "right"))
  flips = np.flatnonzero((pooled[last] == labels) & (plain[last] != labels))
  index = int(flips[0]) if len(flips) else 0
  plot_examples(images, labels, results, keys, shifts,
                os.path.join(out, "shift_examples.png"), index)

  header = ["shift (px)"]
  for label in results:
    header += [f"{label}: accuracy", "stable"]
  rows = []
  for d in shifts:
    row = [d]
    for r in results.values():
      accuracy, stable = r["table"][d]
      row += [f"{100 * accuracy:.1f}%", f"{100 * stable:.1f}%"]
    rows.append(row)
  (lp, rp), (ln, rn), (la, ra) = results.items()
  d = shifts[-1]
  finding = (
      f"Shifting {count:,} test digits by {d} px, the CNN with max-pooling "
      f"keeps {100 * rp['table'][d][1]:.1f}% of its predictions "
      f"({100 * rp['table'][d][0]:.1f}% accuracy), the same CNN without "
      f"pooling {100 * rn['table'][d][1]:.1f}% "
      f"({100 * rn['table'][d][0]:.1f}%): pooling buys only a few points "
      f"(at 2 px: {100 * rp['table'][2][1]:.1f}% vs "
      f"{100 * rn['table'][2][1]:.1f}%). Training on shifted digits gives "
      f"far more: {100 * ra['table'][d][1]:.1f}% kept "
      f"({100 * ra['table'][d][0]:.1f}% accuracy) at {d} px. Unshifted "
      f"accuracy {100 * rp['table'][0][0]:.1f}% / "
      f"{100 * rn['table'][0][0]:.1f}% / {100 * ra['table'][0][0]:.1f}%.")
  body = [
      "## Setup", "",
      f"All models: conv{features[0]}-conv{features[1]} (3x3, 'same', ReLU) "
      f"then dense{hidden}-dense10, trained {epochs} epoch"
      f"{'s' if epochs > 1 else ''} with configs/mnist.py's optimiser on "
      f"{'a 512-image subset (smoke settings)' if smoke else 'all 60,000 training digits'}"
      ". With pooling: 2x2 max-pool after each conv "
      f"({rp['params']:,} parameters). Without: no pooling, so the dense "
      f"layer reads the full 28x28 maps ({rn['params']:,} parameters). "
      "The first two never see a shifted digit in training; the third is "
      f"the pooling model trained with random shifts of up to {TRAIN_SHIFT} "
      "px (`config.data.augment.crop_padding`), for reference. "
      f"Test: the first {count:,} test digits moved by d pixels in each of "
      "four directions (zero fill; MNIST digits sit in a 20x20 box, so 4 px "
      "keeps them in the frame). Stable: the fraction of predictions equal "
      "to the prediction on the unshifted digit.", "",
      common.markdown_table(header, rows), "",
      "![stability under shifts](shift_stability.png)", "",
      "![a shifted digit](shift_examples.png)", "",
      "## Reading", "",
      "Convolutions are translation-equivariant (a shifted input gives a "
      "shifted feature map); invariance has to come from what follows. A "
      "2x2 max-pool absorbs a shift that stays inside its window, so two of "
      "them shrink a shift to a quarter before the dense layer; but that "
      "dense layer on the 7x7 maps still weighs every position separately. "
      "Measured, pooling's invariance is local and small: both models keep "
      "almost all predictions at 1 px and lose about half at 4 px, the "
      "pooled one a few points less. Shifted training data (augmentation, "
      "experiment 4) teaches the invariance directly. Global average "
      "pooling, which discards position altogether, is the architectural "
      "route.",
      "", f"Runs: [with pooling](runs/{rp['tag']}/), "
      f"[without](runs/{rn['tag']}/), [pooling + shifted training "
      f"data](runs/{ra['tag']}/).",
  ]
  return common.write_result(out, NAME, TITLE, finding, body, started)


if __name__ == "__main__":
  raise SystemExit(common.main(NAME, __doc__, run))
