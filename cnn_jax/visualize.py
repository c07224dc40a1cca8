"""Figures of a run (matplotlib, Agg backend, PNG files)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_learning_curves(records, path):
  """Loss, accuracy and learning rate against the step, train and test.

  Args:
    records: dicts as written to metrics.jsonl (keys step, split, loss,
      accuracy, learning_rate).
    path: PNG file to write.
  """
  train = [r for r in records if r["split"] == "train"]
  test = [r for r in records if r["split"] == "test"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, key in zip(axes[:2], ("loss", "accuracy")):
    ax.plot([r["step"] for r in train], [r[key] for r in train], label="train")
    if test:
      ax.plot([r["step"] for r in test], [r[key] for r in test], "o-",
              label="test")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(key.capitalize())
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale("log")
  axes[2].plot([r["step"] for r in train],
               [r.get("learning_rate", float("nan")) for r in train])
  axes[2].set_xlabel("step")
  axes[2].set_ylabel("learning rate")
  axes[2].set_title("Learning rate")
  axes[2].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
