"""Hyperparameter search: our one-program searches against Optuna.

  python experiments/bench_search.py [--quick] [--epochs=3] [--train=60000]

The same search space (learning rate, weight decay, dropout, label
smoothing of configs/mnist.py's CNN with AdamW and a cosine schedule) and
about the same budget in member-epochs (epochs trained, summed over trials),
on bundled MNIST with 10% of train held out for selection, side by side in
one invocation:
  * ours (cnn_jax/sweeps/search.py): `halving` (ASHA), `pbt`, and `grid`
    (2 learning rates x 2 dropout rates), 4 slots in one compiled program;
  * Optuna (`pip install -e .[search]`): TPE sampler and a successive-
    halving pruner (reduction factor 2, one epoch minimum), one training
    run per trial through our single-run API (steps.create_train_state,
    steps.train_step, steps.evaluate), each trial compiling its own step as
    a fresh run would; stopped once the budget of member-epochs is spent.
Each reports its best validation accuracy, that trial's test accuracy (the
test split is evaluated once, for the chosen trial(s)), wall time and
trials evaluated. --quick: 3,000 training / 1,000 test images (a seeded
subset of the bundled files written to a temporary folder), a smaller CNN;
a few minutes on 2 CPU cores.

Prints a table and, as its LAST line, one JSON object with the figures.
"""

import argparse
import functools
import gzip
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import machine  # pylint: disable=g-import-not-at-top
from cnn_jax.data import batching  # pylint: disable=g-import-not-at-top
from cnn_jax.data import load_splits  # pylint: disable=g-import-not-at-top
from cnn_jax.sweeps import search  # pylint: disable=g-import-not-at-top
from cnn_jax.sweeps import sweep_config  # pylint: disable=g-import-not-at-top
from cnn_jax.training import steps  # pylint: disable=g-import-not-at-top
from configs import mnist_search  # pylint: disable=g-import-not-at-top

SPACE = {"optim": {"learning_rate": ("log_uniform", 3e-4, 3e-2),
                   "weight_decay": ("log_uniform", 1e-6, 1e-2)},
         "model": {"dropout_rate": ("uniform", 0.0, 0.5)},
         "train": {"label_smoothing": ("uniform", 0.0, 0.2)}}
GRID = {"optim": {"learning_rate": ("choice", (1e-3, 1e-2)),
                  "weight_decay": ("choice", (1e-4,))},
        "model": {"dropout_rate": ("choice", (0.0, 0.3))},
        "train": {"label_smoothing": ("choice", (0.05,))}}
SLOTS = 4


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, dtype=">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def _subset(folder, train_count, test_count):
  """A seeded subset of the bundled MNIST as IDX files in `folder`."""
  config = mnist_search.get_config()
  splits = load_splits(ml_collections.ConfigDict(
      {**config.data.to_dict(), "val_fraction": 0.0}))
  rng = np.random.default_rng(0)
  for prefix, split, count in (("train", "train", train_count),
                               ("t10k", "test", test_count)):
    data = splits[split]
    take = np.sort(rng.permutation(len(data))[:count])
    _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"),
               np.asarray(data.images[take]).reshape(count, 28, 28))
    _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"),
               np.asarray(data.labels[take]))
  return folder


def base_config(args, data_dir):
  config = mnist_search.get_config()
  config.train.num_epochs = args.epochs
  config.data.data_dir = data_dir
  if args.quick:
    config.model.features = (16, 32)
    config.model.hidden = 64
    config.data.batch_size = 64
    config.data.eval_batch_size = 500
  config.sweep.slots = SLOTS
  config.sweep.space = ml_collections.ConfigDict(SPACE)
  return config


def args_train_count(config):
  """Training images in the benchmark's data (before the validation split)."""
  splits = load_splits(ml_collections.ConfigDict(
      {**config.data.to_dict(), "val_fraction": 0.0}))
  return len(splits["train"])


def run_ours(kind, config, workdir):
  config = ml_collections.ConfigDict(config.to_dict())
  config.sweep.search = kind
  if kind == "grid":
    config.sweep.space = ml_collections.ConfigDict(GRID)
  if kind == "pbt":  # exploit/explore at every epoch end but the last
    count = args_train_count(config)
    train = count - int(round(count * config.data.val_fraction))
    config.sweep.pbt.every_steps = max(1, train // config.data.batch_size)
  if kind == "halving":
    config.sweep.trials = 6
    config.sweep.halving = ml_collections.ConfigDict(
        {"rungs": tuple(range(1, config.train.num_epochs)), "eta": 2})
  start = time.time()
  summary = search.train_and_evaluate(config, workdir)
  return {"method": f"ours: {kind}", "val_accuracy": summary["val_accuracy"],
          "test_accuracy": summary["test_accuracy"],
          "wall_s": time.time() - start, "trials": summary["trials"],
          "member_epochs": summary["member_epochs"]}


def run_optuna(config, budget, seed=0):
  """TPE + successive halving, one single run per trial, until `budget`
  member-epochs are spent."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  start = time.time()
  probe = sweep_config.resolved_config(config, {})
  splits = load_splits(probe.data)
  train_set, val_set, test_set = splits["train"], splits["val"], splits["test"]
  mean, std = steps.normalization_stats(probe.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), probe.data.batch_size)
  spent = {"epochs": 0, "trials": 0}
  best = {"val": -1.0, "state": None, "eval": None}

  def objective(trial):
    values = {
        "optim.learning_rate": trial.suggest_float("lr", 3e-4, 3e-2,
                                                   log=True),
        "optim.weight_decay": trial.suggest_float("wd", 1e-6, 1e-2, log=True),
        "model.dropout_rate": trial.suggest_float("dropout", 0.0, 0.5),
        "train.label_smoothing": trial.suggest_float("ls", 0.0, 0.2)}
    cfg = sweep_config.resolved_config(config, values)
    spent["trials"] += 1
    state, _ = steps.create_train_state(cfg, jax.random.PRNGKey(cfg.seed),
                                        train_set.example_shape, per_epoch)
    step = jax.jit(functools.partial(
        steps.train_step, mean=mean, std=std,
        label_smoothing=cfg.train.label_smoothing))
    evaluate = jax.jit(functools.partial(steps.eval_step, mean=mean, std=std))
    batches = batching.train_batches(train_set, cfg.data.batch_size, cfg.seed)
    accuracy = 0.0
    for epoch in range(1, cfg.train.num_epochs + 1):
      for _ in range(per_epoch):
        state, _ = step(state, next(batches)[1])
      spent["epochs"] += 1
      accuracy = steps.evaluate(evaluate, state, val_set,
                                cfg.data.eval_batch_size)["accuracy"]
      trial.report(accuracy, epoch)
      if trial.should_prune():
        raise optuna.TrialPruned()
    if accuracy > best["val"]:
      best.update(val=accuracy, state=jax.device_get(state), eval=evaluate)
    return accuracy

  def stop_at_budget(study, _):
    if spent["epochs"] >= budget:
      study.stop()

  study = optuna.create_study(
      direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
      pruner=optuna.pruners.SuccessiveHalvingPruner(
          min_resource=1, reduction_factor=2))
  study.optimize(objective, n_trials=1000, callbacks=[stop_at_budget])
  test = steps.evaluate(best["eval"], best["state"], test_set,
                        probe.data.eval_batch_size)["accuracy"]
  return {"method": "optuna: TPE + halving pruner",
          "val_accuracy": best["val"], "test_accuracy": test,
          "wall_s": time.time() - start, "trials": spent["trials"],
          "member_epochs": float(spent["epochs"])}




def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--train", type=int, default=0,
                      help="training images (0: all; --quick: 3000)")
  args = parser.parse_args()
  train_count = args.train or (3000 if args.quick else 60000)
  test_count = 1000 if args.quick else 10000
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = ""
    if train_count < 60000 or test_count < 10000:
      data_dir = os.path.join(tmp, "data")
      os.makedirs(data_dir)
      _subset(data_dir, train_count, test_count)
    config = base_config(args, data_dir)
    rows = []
    for kind in ("halving", "pbt", "grid"):
      rows.append(run_ours(kind, config, os.path.join(tmp, kind)))
      print(f"  {rows[-1]}", flush=True)
    budget = max(r["member_epochs"] for r in rows)
    rows.append(run_optuna(config, budget))
  print(f"\nMNIST, {train_count} train (10% held out for selection), "
        f"{test_count} test, {args.epochs} epochs per trial, "
        f"{'quick CNN' if args.quick else 'configs/mnist.py CNN'}; "
        f"{machine.cpu_description()} ({os.cpu_count()} cores), "
        f"{jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.1f}")
  print("| method | best val acc | its test acc | wall s | trials | "
        "member-epochs |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['method']} | {r['val_accuracy']:.4f} | "
          f"{r['test_accuracy']:.4f} | {r['wall_s']:.0f} | {r['trials']} | "
          f"{r['member_epochs']:.0f} |")
  optuna_row = rows[-1]
  ours = max(rows[:2], key=lambda r: r["val_accuracy"])
  print(json.dumps({
      "rows": rows, "best_ours": ours["method"],
      "val_gap_points": 100 * (optuna_row["val_accuracy"]
                               - ours["val_accuracy"]),
      "wall_ratio_vs_optuna": ours["wall_s"] / optuna_row["wall_s"],
      "load": os.getloadavg()[0], "quick": args.quick}))


if __name__ == "__main__":
  main()
