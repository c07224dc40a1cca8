"""Time to the first training step, with and without the compilation cache,
and what steps_per_call costs in compilation against what it saves.

Startup: for each config, `python launch.py --config <config> --workdir
<new folder> --config.train.stop_after_steps=1` three times in a row, each a
new process; time to first step = from the interpreter's start to the end
of the first train call (launch.py's main, with that call waited for; the
call holds config.train.steps_per_call steps), then it saves a checkpoint
and exits with status 143, as a preempted run:
  off:  --config.train.compilation_cache=off (every program compiled);
  cold: an empty cache folder (compiled, and written to the cache);
  warm: the same folder again (loaded from it; 'new entries' says how many
        programs were compiled again: 0 when everything came from the cache).
`import launch` alone is timed too: the part no cache can shorten.

steps_per_call (--spc 1,6,6:full,39,...): configs/mnist_fast.py's train call of N
steps compiled and run in this process: compile time, time per step (wall
and CPU), and compile + the config's steps. On the CPU a call of N steps is
a lax.scan loop (training/train.py), as N or N:1; N:2 unrolls it by 2,
N:full into one loop-free program (the CPU's default until session 11),
whose compile time grows with N.

  python experiments/bench_startup.py                # startup only, ~2 min
  python experiments/bench_startup.py --spc 1,6,6:full,39 --rounds 5  # + steps_per_call
  python experiments/bench_startup.py --configs configs/mnist.py --spc ""

The last line is one JSON object with the headline figures.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import machine  # pylint: disable=g-import-not-at-top


# launch.py's main, with the first train call timed from process start (it
# blocks until that call's steps are done) and printed as 'first step at'.
_TIMED_LAUNCH = """
import time
START = time.perf_counter()
import sys
import jax
from absl import app
import launch
from cnn_jax.training import train
compiled_steps = train._compiled_steps

def timed(run):
  train_call, eval_fn = compiled_steps(run)
  calls = []

  def first_timed(state, batch):
    out = train_call(state, batch)
    if not calls:
      jax.block_until_ready(out)
      print(f"first step at {time.perf_counter() - START:.3f}", flush=True)
    calls.append(1)
    return out

  return first_timed, eval_fn

train._compiled_steps = timed
sys.argv[0] = "launch.py"
app.run(launch.main, flags_parser=launch.parse_flags)
"""


def launch(config, workdir, *overrides):
  """(seconds from start to the end of the first train call (None if not
  reached), exit status, summary dict or None, seconds from start to exit).
  """
  command = [sys.executable, "-c", _TIMED_LAUNCH,
             f"--config={config}", f"--workdir={workdir}", *overrides]
  env = dict(os.environ, PYTHONPATH=REPO)
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, check=False, timeout=1800)
  seconds = time.perf_counter() - start
  if result.returncode not in (0, 143):
    raise RuntimeError(f"{' '.join(command)} exited with "
                       f"{result.returncode}: {result.stderr[-2000:]}")
  summary = None
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
  first = [float(line.split()[-1]) for line in result.stdout.splitlines()
           if line.startswith("first step at ")]
  return (first[0] if first else None), result.returncode, summary, seconds


def import_seconds():
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import launch"], cwd=REPO,
                 env=dict(os.environ, PYTHONPATH=REPO), check=True)
  return time.perf_counter() - start


def _entries(cache):
  """Compiled programs in a JAX cache folder (without its access-time and
  lock files)."""
  if not os.path.isdir(cache):
    return 0
  return sum(name.endswith("-cache") for name in os.listdir(cache))


def startup(configs, scratch):
  """{config: {off, cold, warm, new_entries}} seconds to the first step."""
  results = {}
  print("| config | cache off | cold (empty cache) | warm | entries written "
        "cold / warm |")
  print("|---|---|---|---|---|")
  for config in configs:
    name = os.path.splitext(os.path.basename(config))[0]
    cache = os.path.join(scratch, f"cache_{name}")
    row = {}
    for kind in ("off", "cold", "warm"):
      setting = "off" if kind == "off" else cache
      before = _entries(cache)
      row[kind] = launch(config, os.path.join(scratch, f"{name}_{kind}"),
                         "--config.train.stop_after_steps=1",
                         f"--config.train.compilation_cache={setting}")[0]
      if kind != "off":
        row[f"entries_{kind}"] = _entries(cache) - before
    results[name] = row
    print(f"| {config} | {row['off']:.1f} s | {row['cold']:.1f} s | "
          f"{row['warm']:.1f} s | {row['entries_cold']} / "
          f"{row['entries_warm']} |", flush=True)
  return results


def _unroll_label(n, unroll):
  return "-" if n == 1 else ("full" if unroll is True else str(unroll))


def steps_per_call_study(values, rounds=3):
  """{(N, unroll label): (compile s, compile CPU-s, step s, step CPU-s)} of
  configs/mnist_fast.py's train call, compiled in this process, then timed
  in `rounds` rounds that alternate the variants (the machine's speed
  drifts; each variant's median round counts)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import multistep  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import steps  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import train  # pylint: disable=g-import-not-at-top
  from configs import mnist_fast  # pylint: disable=g-import-not-at-top
  config = mnist_fast.get_config()
  with tempfile.TemporaryDirectory() as workdir:
    run = train._prepare_run(config, workdir)  # pylint: disable=protected-access
    state, _ = train._initial_state(run)  # pylint: disable=protected-access
  step_fn = functools.partial(
      steps.train_step, mean=run.mean, std=run.std,
      augment_config=config.data.augment.to_dict(),
      label_smoothing=config.train.label_smoothing, task=run.task)
  rng = np.random.default_rng(0)
  batch = config.data.batch_size
  total = config.train.num_epochs * run.steps_per_epoch
  variants = {}  # (n, label) -> [compiled, state, batches, compile times]
  for n, unroll in values:
    group = {"image": rng.integers(0, 256, (n, batch, 28, 28, 1), np.uint8),
             "label": rng.integers(0, 10, (n, batch)).astype(np.int32)}
    fn = step_fn
    if n == 1:
      group = jax.tree.map(lambda x: x[0], group)
    else:
      fn = multistep.make_multi_step(step_fn, unroll)
    current = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x,
                           state)
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = jax.jit(fn, donate_argnums=0).lower(current, group).compile()
    compile_s = (time.perf_counter() - wall, time.process_time() - cpu)
    current, metrics = compiled(current, group)
    jax.block_until_ready(metrics)
    variants[(n, _unroll_label(n, unroll))] = [compiled, current, group,
                                               compile_s]
  times = {key: [] for key in variants}
  for _ in range(rounds):
    for key, variant in variants.items():
      compiled, current, group, _ = variant
      n = key[0]
      calls = max(2, 24 // n)
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(calls):
        current, metrics = compiled(current, group)
      jax.block_until_ready(metrics)
      variant[1] = current
      times[key].append(((time.perf_counter() - wall) / (calls * n),
                         (time.process_time() - cpu) / (calls * n)))
  print(f"\nconfigs/mnist_fast.py train call (batch {batch}), compiled and "
        f"run in one process ({rounds} alternated rounds, median); 'run' = "
        f"compile + {total} steps")
  print("| steps_per_call | unroll | compile s (CPU-s) | step ms (CPU-ms) | "
        "run s (CPU-s) |")
  print("|---|---|---|---|---|")
  results = {}
  for key, (_, _, _, compile_s) in variants.items():
    step_s = sorted(times[key])[len(times[key]) // 2]
    results[key] = (*compile_s, *step_s)
    print(f"| {key[0]} | {key[1]} | {compile_s[0]:.1f} ({compile_s[1]:.1f}) | "
          f"{1e3 * step_s[0]:.0f} ({1e3 * step_s[1]:.0f}) | "
          f"{compile_s[0] + total * step_s[0]:.0f} "
          f"({compile_s[1] + total * step_s[1]:.0f}) |", flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="configs/mnist.py,"
                      "configs/mnist_fast.py")
  parser.add_argument("--spc", default="",
                      help="comma-separated steps_per_call values N[:unroll] "
                      "(unroll: scan's unroll count, 1 as runs use it, or "
                      "full: no loop) whose compile and step time to measure for "
                      "configs/mnist_fast.py ('' skips)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternated timing rounds of the --spc variants")
  args = parser.parse_args()
  load_before = os.getloadavg()[0]
  print(f"cpu: {machine.cpu_description()}, {len(os.sched_getaffinity(0))} logical cores; "
        f"load average {load_before:.1f}")
  headline = {"import_launch_s": round(import_seconds(), 2)}
  print(f"import launch: {headline['import_launch_s']:.2f} s\n")
  with tempfile.TemporaryDirectory() as scratch:
    for name, row in startup(
        [c for c in args.configs.split(",") if c], scratch).items():
      for kind in ("off", "cold", "warm"):
        headline[f"{name}_{kind}_s"] = round(row[kind], 2)
      headline[f"{name}_warm_new_entries"] = row["entries_warm"]
  if args.spc:
    values = []
    for item in args.spc.split(","):
      n, _, unroll = item.partition(":")
      values.append((int(n), True if unroll == "full" else int(unroll or 1)))
    for (n, label), (cw, cc, sw, sc) in steps_per_call_study(
        values, args.rounds).items():
      key = f"spc{n}" if n == 1 else f"spc{n}_unroll{label}"
      headline[f"{key}_compile_s"] = round(cw, 2)
      headline[f"{key}_compile_cpu_s"] = round(cc, 2)
      headline[f"{key}_step_ms"] = round(1e3 * sw, 1)
      headline[f"{key}_step_cpu_ms"] = round(1e3 * sc, 1)
  headline.update(cpu=machine.cpu_description(), load_avg=[round(load_before, 1),
                                            round(os.getloadavg()[0], 1)])
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
