"""Hyperparameter search: our one-program searches against Optuna.

  python experiments/bench_search.py [--data=mnist,cifar10] [--quick]

The same search space (learning rate, weight decay, dropout, label
smoothing of a small CNN with AdamW and a cosine schedule) and about the
same budget in member-epochs (epochs trained, summed over trials), side by
side in one invocation, for each dataset:
  * mnist: all 60,000 training images, 10,000 of them held out for
    selection (val_fraction 1/6: 0.1 point is 10 images), 10,000 test;
    CNN conv16-pool-conv32-pool-dense64, 2 epochs per trial;
  * cifar10: the bundled 4,000/1,000 subset, 1,000 training images held
    out for selection (0.1 point is 1 image: indicative only), the same CNN
    with batch norm, crop and flip augmentation, 6 epochs per trial.
Methods:
  * ours (cnn_jax/sweeps/search.py): `halving` (ASHA), `pbt` (exploit and
    explore at every epoch end), `grid` (2 learning rates x 2 dropout
    rates), 4 slots in one compiled program;
  * Optuna (`pip install -e .[search]`): TPE sampler and a successive-
    halving pruner (reduction factor 2, rungs at the epochs of our halving),
    one training run per trial through our single-run API
    (steps.create_train_state, steps.train_step, steps.evaluate), each
    trial jitting its own step as a fresh run would; stopped once it has
    spent the largest budget of member-epochs any of ours used.
Every method starts with nothing compiled and its own empty persistent
compilation cache, on as in launch.py's runs: what a user's first search
costs. Each row reports the best validation accuracy over
finished trials, that trial's test accuracy (the test split is evaluated
once, for the chosen trial(s)), wall time (data, compiling, training,
evaluation, checkpoints) and trials evaluated. --quick: a seeded 3,000-image
MNIST subset and 3 epochs on CIFAR-10, for a smoke test (a few minutes).

Prints a table per dataset and, as its LAST line, one JSON object with the
figures.
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
from cnn_jax.training import compilation_cache  # pylint: disable=g-import-not-at-top
from configs import cifar10_simple  # pylint: disable=g-import-not-at-top
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
# Per dataset: epochs per trial, halving's rungs (epochs; Optuna's pruner
# uses the same), trials sampled by our halving, the held-out fraction.
SETUPS = {
    "mnist": {"epochs": 2, "rungs": (1,), "halving_trials": 6,
              "val_fraction": 1 / 6},
    "cifar10": {"epochs": 6, "rungs": (2, 4), "halving_trials": 6,
                "val_fraction": 0.25},
}


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


def base_config(name, setup, data_dir=""):
  """configs/mnist_search.py's search on `name` with the small CNN."""
  config = mnist_search.get_config()
  if name == "cifar10":
    simple = cifar10_simple.get_config()
    config.data = simple.data
    config.model.use_batchnorm = True
  config.model.features = (16, 32)
  config.model.hidden = 64
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.data_dir = data_dir
  config.data.val_fraction = setup["val_fraction"]
  config.train.num_epochs = setup["epochs"]
  config.sweep.slots = SLOTS
  config.sweep.space = ml_collections.ConfigDict(SPACE)
  return config


def run_ours(kind, config, setup, workdir):
  config = ml_collections.ConfigDict(config.to_dict())
  config.sweep.search = kind
  if kind == "grid":
    config.sweep.space = ml_collections.ConfigDict(GRID)
  if kind == "pbt":  # exploit/explore at every epoch end but the last
    train = len(load_splits(config.data)["train"])
    config.sweep.pbt.every_steps = batching.steps_per_epoch(
        train, config.data.batch_size)
  if kind == "halving":
    config.sweep.trials = setup["halving_trials"]
    config.sweep.halving = ml_collections.ConfigDict(
        {"rungs": setup["rungs"], "eta": 2})
  start = time.time()
  summary = search.train_and_evaluate(config, workdir)
  return {"method": f"ours: {kind}", "val_accuracy": summary["val_accuracy"],
          "test_accuracy": summary["test_accuracy"],
          "wall_s": time.time() - start, "trials": summary["trials"],
          "member_epochs": summary["member_epochs"],
          "load": os.getloadavg()[0]}


def run_optuna(config, budget, rungs, seed=0):
  """TPE + successive halving (pruning at `rungs`), one single run per
  trial, until `budget` member-epochs are spent."""
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
        augment_config=cfg.data.augment.to_dict(),
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
      if epoch in rungs and trial.should_prune():
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
          min_resource=rungs[0], reduction_factor=2))
  study.optimize(objective, n_trials=1000, callbacks=[stop_at_budget])
  test = steps.evaluate(best["eval"], best["state"], test_set,
                        probe.data.eval_batch_size)["accuracy"]
  return {"method": "optuna: TPE + halving pruner",
          "val_accuracy": best["val"], "test_accuracy": test,
          "wall_s": time.time() - start, "trials": spent["trials"],
          "member_epochs": float(spent["epochs"]), "load": os.getloadavg()[0]}


def _fresh_caches(folder):
  """Every method starts as a user's first search would: nothing compiled
  in memory, an empty persistent compilation cache (on, as launch.py's runs
  have it: config.train.compilation_cache='auto')."""
  jax.clear_caches()
  compilation_cache.enable(folder)


def bench(name, args, tmp):
  """The rows of one dataset's comparison, and its description line."""
  setup = dict(SETUPS[name])
  data_dir = ""
  if name == "mnist" and args.quick:
    data_dir = os.path.join(tmp, "mnist_subset")
    os.makedirs(data_dir)
    _subset(data_dir, 3000, 1000)
  if name == "cifar10" and args.quick:
    setup.update(epochs=3, rungs=(1, 2))
  config = base_config(name, setup, data_dir)
  splits = load_splits(config.data)
  rows = []
  for kind in ("halving", "pbt", "grid"):
    _fresh_caches(os.path.join(tmp, f"jax_cache_{name}_{kind}"))
    rows.append(run_ours(kind, config, setup,
                         os.path.join(tmp, f"{name}_{kind}")))
    print(f"  {name}: {rows[-1]}", flush=True)
  budget = max(r["member_epochs"] for r in rows)
  _fresh_caches(os.path.join(tmp, f"jax_cache_{name}_optuna"))
  rows.append(run_optuna(config, budget, setup["rungs"]))
  print(f"  {name}: {rows[-1]}", flush=True)
  line = (f"{name}: {len(splits['train'])} train, {len(splits['val'])} val "
          f"(selection), {len(splits['test'])} test; {setup['epochs']} "
          f"epochs per trial, rungs {setup['rungs']}")
  return rows, line


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--data", default="mnist,cifar10")
  args = parser.parse_args()
  names = args.data.split(",")
  unknown = [n for n in names if n not in SETUPS]
  if unknown:
    raise SystemExit(f"--data: unknown {unknown} (known: {list(SETUPS)})")
  print(f"uptime: {os.getloadavg()}", flush=True)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      results[name] = bench(name, args, tmp)
  print(f"\n{machine.cpu_description()}, {jax.devices()[0].device_kind}, "
        f"load (1/5/15 min) {os.getloadavg()}; CNN conv16-conv32-dense64, "
        f"batch 128, {SLOTS} slots")
  headline = {}
  for name, (rows, line) in results.items():
    print(f"\n{line}")
    print("| method | best val acc | its test acc | wall s | trials | "
          "member-epochs | load after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
      print(f"| {r['method']} | {r['val_accuracy']:.4f} | "
            f"{r['test_accuracy']:.4f} | {r['wall_s']:.0f} | {r['trials']} "
            f"| {r['member_epochs']:.0f} | {r['load']:.1f} |")
    optuna_row = rows[-1]
    ours = max(rows[:2], key=lambda r: r["val_accuracy"])
    headline[name] = {
        "rows": rows, "best_ours": ours["method"],
        "val_gap_points": 100 * (optuna_row["val_accuracy"]
                                 - ours["val_accuracy"]),
        "wall_ratio_vs_optuna": ours["wall_s"] / optuna_row["wall_s"]}
  print(json.dumps({**headline, "load": os.getloadavg()[0],
                    "quick": args.quick}))


if __name__ == "__main__":
  main()
