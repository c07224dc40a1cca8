"""Is a K=8 sweep in one program faster than 8 single runs one after another?

  python experiments/bench_sweep.py [--steps=6] [--rounds=2] [--members=8]
      [--vmap_width=auto,8,slots]

Training images/s of configs/mnist.py's simple CNN (batch 128, bundled
MNIST) for K members (learning rates x seeds), measured two ways in the same
process, each after warm-up (compilation excluded):
  * sweep: cnn_jax/sweeps/sweep_steps.py's step trains all K members at once, in one
    program (one row per --vmap_width: w members share one vmap, groups of
    w follow one another unrolled; 'auto' is what a sweep uses by default:
    K on GPU/TPU, 1 on CPU);
    'slots': one member's program called for each member on its row of
    the stacked state (slot_steps.SlotSteps, what searches run on the CPU);
    Each row names the sweep step's convolutions (--sweep_conv_impl, as
    config.sweep.conv_impl: 'auto' is im2col for a vmap on GPU/TPU);
  * sequential: the K members one after another, each with steps.train_step
    (one compiled step shared by all, as a fresh process would compile it).
Both draw the members' own batches on the host (each member's order from its
seed) and prefetch them to the device. Rounds alternate sweep and sequential
timing, so a busy shared machine slows both alike; the figures are totals
over the rounds. Ratio = sweep img/s / sequential img/s (>1: the sweep wins).
--resident=N times the steps alone: N batches per member are put on the
device first and cycled (no host input pipeline).

Measured (K=8, batch 128): idle 2-core CPU (Xeon, jaxlib 0.10.2) 1.21-1.24x
with XLA's convolutions (members unrolled: XLA runs two members' ops at once,
one per core; one vmap 0.41x), 1.11x with oneDNN's (conv_impl 'auto':
2,956 vs 2,653 img/s, load 1.8; one vmap 0.88x); NVIDIA H200 (jax 0.11.2)
4.0-5.3x (0.97M img/s; one vmap with im2col convolutions; with XLA's vmapped convolutions 2.2-3.0x), steps alone
(--resident=8) 4.16x. Files: experiments/results/gpu_bench_sweep_*.txt.

Prints a table, then as its LAST line one JSON object with the headline
figures (the first --vmap_width row; 'vmap_ratio': all K members in one
vmap). About 3 minutes on 2 CPU cores (mostly compilation); on a GPU,
under a minute.
"""

import argparse
import functools
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn_jax.conv import conv_impls  # pylint: disable=g-import-not-at-top
from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.distributed import mesh as parallel
from cnn_jax.sweeps import sweep  # pylint: disable=g-import-not-at-top
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import steps
from configs import mnist


def _config(members):
  config = mnist.get_config()
  config.sweep = ml_collections.ConfigDict(
      {"mode": "grid", "axes": {"optim": {"learning_rate": (1e-3, 3e-3)},
                                "seed": tuple(range(members // 2))}})
  return config


def _load_avg():
  try:
    return round(os.getloadavg()[0], 1)
  except OSError:
    return None


class _resident:  # pylint: disable=invalid-name
  """The first `count` batches of a prefetch iterator, cycled on device."""

  def __init__(self, batches, count):
    self._source = batches
    self._cached = itertools.cycle([next(batches) for _ in range(count)])

  def __next__(self):
    return next(self._cached)

  def close(self):
    self._source.close()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--steps", type=int, default=6,
                      help="timed steps per member per round")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--vmap_width", default="auto,8,slots",
                      help="comma-separated members per vmap to time "
                      "('auto': the default sweep.vmap_width=0; 'slots': "
                      "one member's program per member, slot_steps)")
  parser.add_argument("--sweep_conv_impl", default="auto",
                      help="config.sweep.conv_impl: the sweep steps' "
                      "convolutions (conv_impls.CONV_IMPLS; 'auto': im2col for a "
                      "vmap on GPU/TPU, else as the single runs)")
  parser.add_argument("--resident", type=int, default=0,
                      help="if > 0: draw this many batches per member to the "
                      "device before timing and cycle through them, timing "
                      "the steps alone (no host input pipeline)")
  args = parser.parse_args(argv)
  auto = sweep_steps.resolve_vmap_width(ml_collections.ConfigDict(),
                                        args.members)
  widths = []
  for text in args.vmap_width.split(","):
    width = (text if text == "slots" else
             min(auto if text == "auto" else int(text), args.members))
    if width not in widths:
      widths.append(width)

  _, configs = sweep_config.member_configs(_config(args.members))
  base = configs[0]
  train_set = load_splits(base.data)["train"]
  mean, std = steps.normalization_stats(base.data, train_set)
  batch_size = base.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  seeds = [c.seed for c in configs]
  count = len(configs)

  program = sweep_steps.shared_program(base, per_epoch)
  augments = sweep_steps.distinct_augmentations(configs)
  hparams = sweep_steps.hyperparameter_arrays(configs, augments)
  sweeps = {}
  for width in widths:
    states, _ = sweep_steps.init_members(configs, train_set.example_shape,
                                   per_epoch, program)
    vmap_width = 1 if width == "slots" else width
    conv_impl = sweep_steps.resolve_conv_impl(
        ml_collections.ConfigDict({"conv_impl": args.sweep_conv_impl}),
        vmap_width, count)
    if width == "slots":
      step, _ = sweep_steps.jit_steps(
          program, augments, mean=mean, std=std, member_count=count,
          vary_dropout=False, vmap_width=1, conv_impl=conv_impl,
          mesh=parallel.make_mesh(1, jax.devices()[:1]), per_slot=True)
    else:
      step = jax.jit(sweep_steps.make_train_step(
          program.model, augments, mean=mean, std=std, member_count=count,
          vmap_width=width, conv_impl=conv_impl), donate_argnums=(0, 1))
    batches = prefetch.prefetch_to_device(
        sweep._member_batches(train_set, batch_size, seeds), size=2)  # pylint: disable=protected-access
    sweeps[width] = {"conv_impl": conv_impl or conv_impls.default_conv_impl(),
                     "states": states, "alive": jnp.ones(count, bool),
                     "step": step, "batches": batches, "seconds": 0.0}

  # The single runs: member k's own TrainState (the sweep's init gives the
  # same values as steps.create_train_state) and its own batch order.
  initial, _ = sweep_steps.init_members(configs, train_set.example_shape,
                                  per_epoch, program)
  singles = [{"state": sweep_steps.member_state(initial, k),
              "batches": prefetch.prefetch_to_device(
                  batching.train_batches(train_set, batch_size, s), size=2)}
             for k, s in enumerate(seeds)]
  single_step = jax.jit(functools.partial(steps.train_step, mean=mean,
                                          std=std), donate_argnums=0)
  sequential_seconds = 0.0

  if args.resident:
    for entry in list(sweeps.values()) + singles:
      entry["batches"] = _resident(entry["batches"], args.resident)

  def run_sweep(entry, count):
    for _ in range(count):
      _, batch = next(entry["batches"])
      entry["states"], entry["alive"], metrics = entry["step"](
          entry["states"], entry["alive"], batch, hparams)
    return jax.block_until_ready(metrics)

  def run_single(entry, count):
    for _ in range(count):
      _, batch = next(entry["batches"])
      entry["state"], metrics = single_step(entry["state"], batch)
    return jax.block_until_ready(metrics)

  compile_start = time.perf_counter()
  for entry in sweeps.values():
    run_sweep(entry, args.warmup)
  for entry in singles:
    run_single(entry, args.warmup)
  compile_seconds = time.perf_counter() - compile_start

  for _ in range(args.rounds):
    for entry in sweeps.values():
      start = time.perf_counter()
      run_sweep(entry, args.steps)
      entry["seconds"] += time.perf_counter() - start
    start = time.perf_counter()
    for entry in singles:
      run_single(entry, args.steps)
    sequential_seconds += time.perf_counter() - start

  images = count * args.steps * args.rounds * batch_size
  sequential = images / sequential_seconds
  device = jax.devices()[0]
  print(f"\n{count} members of configs/mnist.py's simple CNN, batch "
        f"{batch_size}, {args.steps} steps x {args.rounds} rounds each "
        f"(after {args.warmup} warm-up steps; warm-up incl. compilation "
        f"{compile_seconds:.0f} s); device {device.device_kind} "
        f"({jax.default_backend()}), load average {_load_avg()}\n")
  print(f"| {'how':60} | {'train img/s':>11} | {'ratio':>5} |")
  print(f"|{'-' * 62}|{'-' * 13}|{'-' * 7}|")
  sequential_how = f"sequential: {count} single runs, one after another"
  print(f"| {sequential_how:60} | {sequential:11.0f} | {1.0:5.2f} |")
  for width, entry in sweeps.items():
    rate = images / entry["seconds"]
    how = ("sweep: one member's program per member (slots)"
           if width == "slots"
           else f"sweep: all {count} members in one vmap" if width == count
           else f"sweep: {count} members unrolled in one program"
           if width == 1 else f"sweep: groups of {width} in one vmap each")
    how += f", {entry['conv_impl']}"
    print(f"| {how:60} | {rate:11.0f} | {rate / sequential:5.2f} |")
  first = sweeps[widths[0]]
  sweep_rate = images / first["seconds"]
  for entry in list(sweeps.values()):
    entry["batches"].close()
  for entry in singles:
    entry["batches"].close()
  full = sweeps.get(count)
  print(json.dumps({
      "ratio": round(sweep_rate / sequential, 3),
      "vmap_ratio": (round(images / full["seconds"] / sequential, 3)
                     if full else None),
      "sweep_img_s": round(sweep_rate, 1),
      "sequential_img_s": round(sequential, 1),
      "members": count, "batch_size": batch_size,
      "timed_steps_per_member": args.steps * args.rounds,
      "vmap_width": widths[0], "resident_batches": args.resident,
      "sweep_conv_impl": first["conv_impl"],
      "device": jax.default_backend(), "device_kind": device.device_kind,
      "load_average": _load_avg()}))


if __name__ == "__main__":
  main()
