"""Does the network need time? A 3D CNN on clips vs a 2D CNN on one frame.

  python experiments/video_vs_frame.py --out runs/video_vs_frame

Trains configs/video_digits.py (C3D-small on 8-frame clips of a moving MNIST
digit, label: one of 8 directions of motion) and configs/video_digits.py:frame
(the simple CNN on the middle frame of the same clips), through
train.train_and_evaluate, one workdir each under --out (finished runs are
reused when the command is repeated), and writes <out>/video_vs_frame.md and
.json: test accuracy (1,000 clips), chance 12.5%, parameters, wall time.
A single frame shows where the digit is, not where it goes.
"""

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: the repository root on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from cnn_jax.models import summary as model_summary
from cnn_jax.training import steps
from cnn_jax.training import train
from configs import video_digits

VARIANTS = {
    "clip": "3D CNN (C3D-small) on the 8-frame clip",
    "frame": "2D CNN (simple CNN) on the middle frame",
}


def _params(config, example_shape):
  model = steps.create_model(config.model)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jax.numpy.zeros((1, *example_shape)), train=False))
  return model_summary.count_params(variables["params"])


def run(variant, seed, out, epochs=0, num_train=0):
  config = video_digits.get_config(variant)
  config.seed = seed
  if epochs:
    config.train.num_epochs = epochs
  if num_train:  # a quick check of the script
    config.data.num_train = num_train
    config.data.num_test = max(num_train // 6, 10)
  workdir = os.path.join(out, f"{variant}_seed{seed}")
  summary_path = os.path.join(workdir, "summary.json")
  summary = None
  if os.path.exists(summary_path):  # a finished run is reused
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
    if summary.get("status") != "finished":
      summary = None
  if summary is None:
    summary = train.train_and_evaluate(config, workdir)
  example_shape = ((config.data.num_frames,) if variant == "clip" else ()) + (
      config.data.frame_size, config.data.frame_size, 1)
  return {"variant": variant, "seed": seed, "what": VARIANTS[variant],
          "test_accuracy": summary["test_accuracy"],
          "epochs": summary["epochs"], "steps": summary["steps"],
          "wall_seconds": summary["wall_seconds"],
          "params": _params(config, example_shape),
          "num_train": config.data.num_train, "num_test": config.data.num_test,
          "workdir": workdir}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/video_vs_frame")
  parser.add_argument("--seeds", type=int, default=1)
  parser.add_argument("--epochs", type=int, default=0,
                      help="0: the config's")
  parser.add_argument("--num_train", type=int, default=0,
                      help="0: the config's (6,000 clips)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  rows = [run(variant, seed, args.out, args.epochs, args.num_train)
          for variant in VARIANTS for seed in range(args.seeds)]
  first = video_digits.get_config()
  lines = ["Direction of motion of a moving MNIST digit (8 classes, chance "
           f"12.5%), {rows[0]['num_train']:,} train / {rows[0]['num_test']:,} "
           f"test clips of {first.data.num_frames} frames of "
           f"{first.data.frame_size}x{first.data.frame_size}.",
           "",
           "| model | input | seed | params | epochs | test accuracy | "
           "wall (s) |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['what']} | {r['variant']} | {r['seed']} | "
                 f"{r['params']:,} | {r['epochs']} | "
                 f"{100 * r['test_accuracy']:.1f}% | {r['wall_seconds']:.0f} |")
  markdown = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "video_vs_frame.md"), "w",
            encoding="utf-8") as f:
    f.write(markdown)
  with open(os.path.join(args.out, "video_vs_frame.json"), "w",
            encoding="utf-8") as f:
    json.dump({"rows": rows, "wall_seconds": time.time() - start}, f,
              indent=2)
  print(markdown)


if __name__ == "__main__":
  main()
