"""MNIST: a hyperparameter search in one compiled program (successive
halving over learning rate, weight decay, dropout and label smoothing of
configs/mnist.py's CNN), selecting on 10% of train held out as validation.

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/mnist_search.py --workdir runs/mnist_search
  python launch.py --config runs/mnist_search/best_config.py --workdir runs/best

Switch the search from the command line: --config.sweep.search=random (no
early stopping) or pbt (population-based training; pbt.every_steps,
pbt.quantile, pbt.factors). Writes summary.md (trials ranked by validation
accuracy; test accuracy of the kept trials, evaluated once at the end),
trials.jsonl (every trial's config and lineage), best_config.py and best/
(the best trial as an ordinary run folder). See the README's sweep section.

Measured with a smaller CNN on all of MNIST against Optuna in
experiments/bench_search.py (table in the README's search section).
"""

import ml_collections

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.train.num_epochs = 3
  config.optim.name = "adamw"
  config.optim.schedule = "cosine"
  config.data.val_fraction = 0.1  # selection never sees the test split

  config.sweep = ml_collections.ConfigDict()
  config.sweep.search = "halving"  # 'random' | 'halving' | 'pbt'
  config.sweep.space = ml_collections.ConfigDict()
  config.sweep.space.optim = ml_collections.ConfigDict({
      "learning_rate": ("log_uniform", 3e-4, 3e-2),
      "weight_decay": ("log_uniform", 1e-6, 1e-2)})
  config.sweep.space.model = ml_collections.ConfigDict(
      {"dropout_rate": ("uniform", 0.0, 0.5)})
  config.sweep.space.train = ml_collections.ConfigDict(
      {"label_smoothing": ("uniform", 0.0, 0.2)})
  config.sweep.slots = 4  # trials trained at once (one program for all)
  config.sweep.trials = 12  # configurations sampled in all (random, halving)
  config.sweep.search_seed = 0  # same seed -> same trials
  config.sweep.metric = "accuracy"  # on the validation split
  config.sweep.halving = ml_collections.ConfigDict(
      {"rungs": (1, 2), "eta": 2})  # epochs; keep the top 1/eta
  config.sweep.pbt = ml_collections.ConfigDict(
      {"every_steps": 200, "quantile": 0.25, "factors": (0.8, 1.2)})
  config.sweep.member_devices = 1
  config.sweep.vmap_width = 0
  config.sweep.conv_impl = "auto"
  return config
