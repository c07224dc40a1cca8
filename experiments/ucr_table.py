"""FCN on the bundled UCR/UEA sets, mean of 3 seeds, against published numbers.

  python experiments/ucr_table.py --out runs/ucr_table
  python experiments/ucr_table.py --out runs/ucr_long --features= \
      --epochs_scale=10   # the full-width FCN, 10x the epochs

Trains configs/ucr.py:<set> once per (set, seed) through
train.train_and_evaluate (one workdir each, under --out; finished ones are
reused when the command is repeated) and writes
<out>/ucr_table.md and <out>/ucr_table.json: test accuracy per seed, mean
and std, against the deep-learning accuracies reported by Fawaz et al.
(2019, "Deep learning for time series classification: a review") for FCN
and ResNet, as quoted in the project's issue 9.

To stay within ~10 minutes of a 2-core CPU the default run trains for far
fewer epochs than the paper's 2000 (configs/ucr.py's UCR_SETS; the table
says how many) and uses a half-width FCN (64-128-64 filters, --features):
both may cost accuracy on the harder sets (OSULeaf, ArrowHead).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: the repository root on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from cnn_jax.data import bundled_data_dir
from cnn_jax.data import ucr
from cnn_jax.training import train
from configs import ucr as ucr_config

SETS = ("GunPoint", "ItalyPowerDemand", "ArrowHead", "OSULeaf",
        "BasicMotions")
# Published accuracies (%), Fawaz et al. 2019 (FCN, ResNet), as quoted in
# issue 9: a value or a range.
PUBLISHED = {
    "GunPoint": "~100",
    "ItalyPowerDemand": "96-97",
    "OSULeaf": "97-99",
    "ArrowHead": "84-85",
    "BasicMotions": "~100",
}


def run_one(name, seed, out, features, epochs, model):
  config = ucr_config.get_config(name)
  config.seed = seed
  config.model.name = model
  if features:
    config.model.features = tuple(features)
  config.train.num_epochs = epochs
  config.train.eval_every_epochs = epochs  # only at the end
  config.train.log_every_steps = 1000
  workdir = os.path.join(out, f"{name}_seed{seed}")
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):  # a finished run is reused
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
    if summary.get("status") == "finished":
      return {"accuracy": summary["test_accuracy"],
              "wall_seconds": summary["wall_seconds"], "workdir": workdir}
  summary = train.train_and_evaluate(config, workdir)
  return {"accuracy": summary["test_accuracy"],
          "wall_seconds": summary["wall_seconds"], "workdir": workdir}


def table_markdown(rows, args):
  lines = [
      f"UCR/UEA test accuracy (%), {args.model} "
      f"(filters {'-'.join(map(str, args.features)) or 'default'}), "
      f"mean ± std of seeds {', '.join(map(str, range(args.seeds)))}; "
      "published: Fawaz et al. (2019), FCN/ResNet, as quoted in issue 9.",
      "",
      "| set | train/test | length x dims | classes | epochs | ours | per seed "
      "| published | wall (s) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['set']} | {r['train']}/{r['test']} | {r['length']} x "
        f"{r['dims']} | {r['classes']} | {r['epochs']} | "
        f"{r['mean']:.1f} ± {r['std']:.1f} | "
        f"{', '.join(f'{a:.1f}' for a in r['per_seed'])} | "
        f"{PUBLISHED.get(r['set'], '')} | {r['wall_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/ucr_table")
  parser.add_argument("--sets", default=",".join(SETS))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--model", default="cnn1d", help="cnn1d or resnet1d")
  parser.add_argument("--features", default="64,128,64",
                      help="filters per layer; empty: the model's default")
  parser.add_argument("--epochs_scale", type=float, default=1.0,
                      help="multiply the epochs of every set (UCR_SETS)")
  args = parser.parse_args()
  args.features = [int(f) for f in args.features.split(",") if f]
  os.makedirs(args.out, exist_ok=True)  # finished runs in it are reused
  start = time.time()
  rows = []
  for name in args.sets.split(","):
    epochs = max(1, int(round(ucr_config.UCR_SETS[name][2]
                              * args.epochs_scale)))
    runs = [run_one(name, seed, args.out, args.features, epochs, args.model)
            for seed in range(args.seeds)]
    accuracy = 100 * np.array([r["accuracy"] for r in runs])
    splits = ucr.load_ucr(bundled_data_dir("ucr"), name)
    rows.append({
        "set": name, "train": len(splits["train"]),
        "test": len(splits["test"]),
        "length": splits["train"].example_shape[0],
        "dims": splits["train"].example_shape[1],
        "classes": len(splits["train"].class_names), "epochs": epochs,
        "per_seed": accuracy.tolist(), "mean": float(accuracy.mean()),
        "std": float(accuracy.std()), "published": PUBLISHED.get(name, ""),
        "wall_seconds": float(sum(r["wall_seconds"] for r in runs)),
        "workdirs": [r["workdir"] for r in runs]})
    print(f"{name}: {accuracy.mean():.1f} ± {accuracy.std():.1f}% "
          f"({time.time() - start:.0f} s so far)", flush=True)
  markdown = table_markdown(rows, args)
  total = time.time() - start
  markdown += f"\nTotal wall time {total:.0f} s.\n"
  with open(os.path.join(args.out, "ucr_table.md"), "w",
            encoding="utf-8") as f:
    f.write(markdown)
  with open(os.path.join(args.out, "ucr_table.json"), "w",
            encoding="utf-8") as f:
    json.dump({"model": args.model, "features": args.features,
               "seeds": args.seeds, "rows": rows, "wall_seconds": total},
              f, indent=2)
  print(markdown)


if __name__ == "__main__":
  main()
