"""Checkpoint cost: save time (sync vs async) and size, MNIST CNN and ResNet-50.

  python experiments/bench_checkpoint.py [--repeats=3]

For each train state (params, AdamW moments, batch_stats, step, rng; filled
with random values, so compression cannot flatter the sizes) this saves with
cnn_jax.checkpoint.save, synchronously and with async saving, and reports:
  blocking  how long the training loop waits in save() (async: until the
            arrays are copied off the device and checked; the files are
            written in the background);
  total     until the checkpoint is complete on disk;
  restore   reading it back, checksums verified;
  size      one checkpoint on disk.
Prints a table; the last line is one JSON object with the headline figures.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# The repository root, for `configs` (run as python experiments/...).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn_jax.runs import checkpoint  # pylint: disable=g-import-not-at-top
from cnn_jax.training import steps
from configs import mnist as mnist_config

flags.DEFINE_integer("repeats", 3, "Saves per model and mode (median kept).")
FLAGS = flags.FLAGS


def _states():
  """{name: (abstract TrainState, example shape)} for the benchmark."""
  mnist = mnist_config.get_config()
  resnet = mnist_config.get_config()
  resnet.model = ml_collections.ConfigDict(
      {"name": "resnet50", "num_classes": 1000, "dtype": "float32"})
  return {"mnist_cnn": (mnist, (28, 28, 1)),
          "resnet50": (resnet, (224, 224, 3))}


def _random_state(config, example_shape, seed=0):
  """A TrainState of the config's shapes, filled with random values (no
  model.init: that would take minutes for ResNet-50 on a CPU)."""
  abstract = steps.abstract_train_state(config, example_shape,
                                        steps_per_epoch=100)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      values = 0.05 * rng.standard_normal(leaf.shape, dtype=np.float32)
    else:
      values = rng.integers(0, 2**31, leaf.shape)
    return jnp.asarray(values, leaf.dtype)

  return jax.tree.map(fill, abstract)


def _options(async_save):
  return ml_collections.ConfigDict({
      "every_steps": 0, "every_seconds": 0.0, "keep": 100,
      "keep_best_metric": "", "async_save": async_save})


def _size_mb(path):
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


def _measure(state, config, async_save, repeats, workdir):
  """Median seconds (blocking, total, restore) and size in MiB."""
  manager = checkpoint.make_manager(workdir, _options(async_save))
  meta = {"config": config.to_dict()}
  blocking, total = [], []
  for step in range(1, repeats + 1):
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    jax.block_until_ready(state)
    start = time.perf_counter()
    checkpoint.save(manager, state, {**meta, "step": step})
    blocking.append(time.perf_counter() - start)
    manager.wait_until_finished()
    total.append(time.perf_counter() - start)
  manager.close()
  reader = checkpoint.make_manager(workdir)
  start = time.perf_counter()
  restored, _ = checkpoint.restore(reader, jax.eval_shape(lambda: state),
                                   repeats)
  jax.block_until_ready(restored)
  restore = time.perf_counter() - start
  reader.close()
  size = _size_mb(os.path.join(checkpoint.checkpoint_dir(workdir),
                               str(repeats)))
  return (statistics.median(blocking), statistics.median(total), restore,
          size)


def main(argv):
  del argv
  # Orbax logs every save at INFO, and warns about the waits for each save
  # that this script makes on purpose (--verbosity=0 brings them back).
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  root = tempfile.mkdtemp(prefix="bench_checkpoint_")
  rows, headline = [], {}
  try:
    for name, (config, example_shape) in _states().items():
      state = _random_state(config, example_shape)
      num_params = sum(x.size for x in jax.tree.leaves(state.params))
      results = {}
      for async_save in (False, True):
        mode = "async" if async_save else "sync"
        workdir = os.path.join(root, f"{name}_{mode}")
        results[mode] = _measure(state, config, async_save, FLAGS.repeats,
                                 workdir)
        shutil.rmtree(workdir)
        rows.append((name, num_params, mode, *results[mode]))
      headline.update({
          f"{name}_params": int(num_params),
          f"{name}_save_s": round(results["sync"][1], 4),
          f"{name}_async_blocking_s": round(results["async"][0], 4),
          f"{name}_async_total_s": round(results["async"][1], 4),
          f"{name}_restore_s": round(results["sync"][2], 4),
          f"{name}_mb": round(results["sync"][3], 2),
      })
  finally:
    shutil.rmtree(root, ignore_errors=True)

  print(f"device: {jax.devices()[0].device_kind}; median of {FLAGS.repeats} "
        "saves; seconds and MiB")
  print(f"{'state':<10} {'params':>11} {'mode':<6} {'blocking':>9} "
        f"{'total':>8} {'restore':>8} {'size':>8}")
  for name, num_params, mode, blocking, total, restore, size in rows:
    print(f"{name:<10} {num_params:>11,} {mode:<6} {blocking:>9.3f} "
          f"{total:>8.3f} {restore:>8.3f} {size:>8.1f}")
  headline["mnist_save_s"] = headline.pop("mnist_cnn_save_s")
  headline["mnist_mb"] = headline.pop("mnist_cnn_mb")
  # The part of a save the training loop still waits for with async saving.
  headline["async_blocking_ratio"] = round(
      headline["resnet50_async_blocking_s"] / headline["resnet50_save_s"], 3)
  headline["device"] = jax.devices()[0].device_kind
  print(json.dumps(headline))


if __name__ == "__main__":
  app.run(main)
