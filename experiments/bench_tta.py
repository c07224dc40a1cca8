"""Time to accuracy on MNIST: cnn_jax against PyTorch on this machine.

Three runs per seed, each a new process started by this script, one after
another (seeds interleaved, so a change in the machine's load hits all):
  cnn_jax:        `launch.py --config <recipe>` (default configs/mnist_tta.py:
                  configs/mnist_fast.py with random 2-pixel shifts and 10
                  epochs), evaluated after every epoch; compilation
                  cache off: every program is compiled, as on a first run;
  torch same:     the same network, initialisation scheme, optimizer,
                  schedule, label smoothing, augmentation, batch size and
                  epochs, read from the same config file and written in
                  PyTorch here (dropout and random-crop translation
                  included; eager, and with --torch_modes
                  eager,compile also the model under torch.compile), each
                  with glibc's allocator as PyTorch runs out of the box
                  and with the setting cnn_jax's runs make on the CPU
                  (freed memory kept: training/cpu_malloc.py; eager
                  PyTorch page-faults on every step's activations
                  without it, as XLA:CPU does) (--torch_malloc); for a
                  recipe whose convolutions (and dense layers) multiply
                  in bfloat16 (config.train.matmul_precision='bfloat16',
                  the default recipe's), each under torch.autocast(bfloat16)
                  and in float32 (--torch_precision);
  torch own:      PyTorch's own recipe for the task: the network with
                  BatchNorm, AdamW with torch's OneCycleLR (max_lr 3e-3),
                  batch 128, 4 epochs (a standard recipe, not tuned here).
Each evaluates all 10,000 test images after every epoch; the time of an
epoch's evaluation is counted from the process's first statement. The
table gives, per run, the first time it reached 99.4% and 99.5% test
accuracy ('-': not reached) and its seconds per epoch after the first
(its pace: training plus evaluation, no start-up, whichever epoch first
crosses a target), with the machine in every row (the GPU by nvidia-smi's
name where there is one, on which both frameworks then train; the CPU by
lscpu's model name and the instruction sets that matter), then the means
over seeds, cnn_jax's time to 99.4% over each PyTorch run's (the headline:
over the fastest PyTorch run of the same recipe) and its pace over theirs.

  python experiments/bench_tta.py                  # 3 seeds: ~45-70 min, 2 idle cores
  python experiments/bench_tta.py --quick          # 1 seed, 2 epochs, eager
  python experiments/bench_tta.py --seeds 3 --recipe configs/mnist_tta.py \
      --torch_modes eager,compile

PyTorch is optional (the CPU wheel); without it only cnn_jax runs. The last
line is one JSON object with the headline figures.
"""

import time

_START = time.perf_counter()  # this process's start, for --worker runs

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import machine  # pylint: disable=g-import-not-at-top
from cnn_jax.training import cpu_malloc  # pylint: disable=g-import-not-at-top
TARGETS = (0.994, 0.995)
# Printed by every run after each evaluation: epoch, accuracy, seconds.
MARK = "tta epoch"

# launch.py's main, with each test evaluation printed with its time from the
# process's first statement.
_JAX_RUN = """
import time
START = time.perf_counter()
import sys
from absl import app
import launch
from cnn_jax.runs import writers
_write = writers.MetricWriter.write

def _timed_write(self, step, split, metrics):
  _write(self, step, split, metrics)
  if split == "test":
    print(f"%s {metrics['epoch']} {metrics['accuracy']} "
          f"{time.perf_counter() - START}", flush=True)

writers.MetricWriter.write = _timed_write
sys.argv[0] = "launch.py"
app.run(launch.main, flags_parser=launch.parse_flags)
""" % MARK




# ---------------------------------------------------------------- PyTorch side


def read_idx(path):
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = np.frombuffer(data, ">u4", ndim, 4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(data_dir):
  def part(prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return images, labels.astype(np.int64)

  return part("train"), part("t10k")


def onecycle(step, total, peak, pct_start, div=25.0, final_div=1e4):
  """optax.cosine_onecycle_schedule's value at `step` (what cnn_jax's
  'one_cycle' schedule is)."""
  boundary = int(pct_start * total)
  start, end = peak / div, peak / div / final_div

  def interpolate(a, b, fraction):
    return b + (a - b) / 2 * (math.cos(math.pi * fraction) + 1)

  if step < boundary:
    return interpolate(start, peak, step / boundary)
  return interpolate(peak, end, min(1.0, (step - boundary)
                                    / max(total - boundary, 1)))


def torch_recipe(kind, recipe_path, epochs):
  """The recipe a torch worker trains: 'same' reads the cnn_jax config."""
  if kind == "own":
    return {"batchnorm": True, "dropout": 0.0, "batch": 128,
            "epochs": epochs or 4,
            "optim": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
            "schedule": "torch_onecycle", "label_smoothing": 0.0,
            "crop_padding": 0, "warmup_epochs": None, "eval_batch": 1000}
  sys.path.insert(0, REPO)
  import importlib.util
  spec = importlib.util.spec_from_file_location("recipe", recipe_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  unsupported = [
      f"{k}={v!r}" for k, v in (
          ("model.name", config.model.name), ("optim.name", config.optim.name),
          ("optim.schedule", config.optim.schedule),
          ("optim.grad_clip_norm", config.optim.grad_clip_norm))
      if not {"model.name": v == "simple_cnn",
              "optim.name": v in ("adamw", "nesterov", "momentum"),
              "optim.schedule": v == "one_cycle",
              "optim.grad_clip_norm": not v}[k]]
  augment = {k: v for k, v in config.data.augment.to_dict().items()
             if k != "crop_padding" and v}
  if unsupported or augment:
    raise SystemExit(f"{recipe_path}: the PyTorch twin does not implement "
                     f"{', '.join(unsupported + list(augment))}")
  return {"batchnorm": config.model.use_batchnorm,
          "dropout": config.model.dropout_rate,
          "batch": config.data.batch_size,
          "epochs": epochs or config.train.num_epochs,
          "optim": config.optim.name, "lr": config.optim.learning_rate,
          "weight_decay": config.optim.weight_decay,
          "b1": config.optim.b1, "b2": config.optim.b2,
          "momentum": config.optim.momentum,
          "schedule": "one_cycle",
          "warmup_epochs": config.optim.warmup_epochs,
          "label_smoothing": config.train.label_smoothing,
          "crop_padding": config.data.augment.crop_padding,
          "eval_batch": config.data.eval_batch_size,
          # Convolutions multiplied in bfloat16 (cnn_jax: matmul precision
          # 'bfloat16'; PyTorch: torch.autocast, its way to say so).
          "bfloat16": config.train.get("matmul_precision", "") == "bfloat16"}


def torch_model(recipe, flax_init):
  """simple_cnn in PyTorch (NCHW), with BatchNorm and dropout as `recipe`
  says; `flax_init`: flax's default initialisation (lecun_normal kernels
  truncated at 2 standard deviations, zero biases) instead of torch's."""
  import torch  # pylint: disable=unused-import
  from torch import nn
  bn = recipe["batchnorm"]

  def block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn),
            *([nn.BatchNorm2d(c_out, momentum=0.1)] if bn else []),
            nn.ReLU(), nn.MaxPool2d(2)]

  model = nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(),
                        nn.Linear(3136, 256), nn.ReLU(),
                        nn.Dropout(recipe["dropout"]), nn.Linear(256, 10))
  if flax_init:
    for layer in model:
      if isinstance(layer, (nn.Conv2d, nn.Linear)):
        fan_in = layer.weight[0].numel()
        std = math.sqrt(1.0 / fan_in) / .87962566103423978
        nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
        if layer.bias is not None:
          nn.init.zeros_(layer.bias)
  return model


def torch_worker(kind, recipe_path, seed, epochs, mode, precision="float32"):
  """Trains the recipe in PyTorch, printing MARK lines after each epoch;
  precision 'bfloat16': forward passes and losses under
  torch.autocast(bfloat16) (convolutions and linear layers in bfloat16, the
  rest as autocast chooses). On the GPU where PyTorch sees one (as cnn_jax's
  run uses it): the data set lives there, as cnn_jax's does."""
  import contextlib
  import torch
  from torch import nn
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16))
              if precision == "bfloat16" else contextlib.nullcontext)
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.backends.cudnn.benchmark = True
  recipe = torch_recipe(kind, recipe_path, epochs)
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  (train_x, train_y), (test_x, test_y) = load_mnist(
      os.path.join(REPO, "data", "mnist"))
  mean = float(train_x.mean() / 255.0)
  std = float(train_x.std() / 255.0)
  train_x = torch.from_numpy(train_x.copy()).unsqueeze(1).to(device)  # uint8
  train_y = torch.from_numpy(train_y.copy()).to(device)
  test_x = (torch.from_numpy(test_x.copy()).unsqueeze(1).float().to(device)
            / 255.0 - mean) / std
  test_y = torch.from_numpy(test_y.copy()).to(device)

  model = torch_model(recipe, flax_init=kind == "same").to(device)
  batch, num_epochs = recipe["batch"], recipe["epochs"]
  steps_per_epoch = len(train_x) // batch
  total = steps_per_epoch * num_epochs
  if recipe["optim"] == "adamw":
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                            betas=(recipe.get("b1", 0.9), recipe.get("b2", 0.999)),
                            weight_decay=recipe["weight_decay"])
  else:
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"],
                          momentum=recipe["momentum"],
                          nesterov=recipe["optim"] == "nesterov",
                          weight_decay=recipe["weight_decay"])
  if recipe["schedule"] == "torch_onecycle":
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe["lr"], total_steps=total)
    set_lr = lambda step: None
  else:
    scheduler = None
    warmup = int(round(recipe["warmup_epochs"] * steps_per_epoch))
    pct = warmup / total if warmup else 0.25

    def set_lr(step):
      for group in opt.param_groups:
        group["lr"] = onecycle(step, total, recipe["lr"], pct)

  forward = torch.compile(model) if mode == "compile" else model
  pad = recipe["crop_padding"]
  loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
  rows = torch.arange(28, device=device)
  examples = torch.arange(batch, device=device)[:, None, None]
  step = 0
  for epoch in range(1, num_epochs + 1):
    model.train()
    order = torch.from_numpy(rng.permutation(len(train_x))).to(device)
    for i in range(steps_per_epoch):
      index = order[i * batch:(i + 1) * batch]
      images = train_x[index].float()
      if pad:  # random translation by up to `pad` pixels, zero fill
        padded = nn.functional.pad(images, (pad,) * 4)
        dy = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=device)
        dx = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=device)
        images = padded[examples, 0,
                        dy + rows[None, :, None],
                        dx + rows[None, None, :]].unsqueeze(1)
      images = (images / 255.0 - mean) / std
      set_lr(step)
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = loss_fn(forward(images), train_y[index])
      loss.backward()
      opt.step()
      if scheduler is not None:
        scheduler.step()
      step += 1
    model.eval()
    correct, size = 0, recipe["eval_batch"]
    with torch.no_grad(), autocast():
      for i in range(0, len(test_x), size):
        correct += int((forward(test_x[i:i + size]).argmax(1)
                        == test_y[i:i + size]).sum())
    print(f"{MARK} {epoch} {correct / len(test_x)} "
          f"{time.perf_counter() - _START}", flush=True)


# ---------------------------------------------------------------- the driver


def run(command, env=None):
  """[(epoch, accuracy, seconds)] of one run's MARK lines."""
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          check=False, env=env, timeout=7200)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command[:4])}... exited with "
                       f"{result.returncode}: {result.stderr[-2000:]}")
  return [(int(float(w[2])), float(w[3]), float(w[4]))
          for w in (line.split() for line in result.stdout.splitlines()
                    if line.startswith(MARK))]


def first_reaching(curve, target):
  return next((t for _, accuracy, t in curve if accuracy >= target), None)


def epoch_seconds(curve):
  """Seconds per epoch after the first (training plus that epoch's
  evaluation; no start-up or compilation): the pace, free of which epoch
  first reaches a target. None for a one-epoch run."""
  if len(curve) < 2:
    return None
  return (curve[-1][2] - curve[0][2]) / (curve[-1][0] - curve[0][0])


def show(seconds):
  return "-" if seconds is None else f"{seconds:.1f} s"


def ratio(ours, theirs):
  """ours / theirs to two decimals, or None where either is missing."""
  return None if ours is None or theirs is None else round(ours / theirs, 2)


def show_ratio(value):
  return "-" if value is None else f"{value:.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=3,
                      help="how many seeds (0, 1, ...) each run is trained with")
  parser.add_argument("--recipe", default="configs/mnist_tta.py",
                      help="cnn_jax's config (and the PyTorch twin's recipe)")
  parser.add_argument("--epochs", type=int, default=0,
                      help="0: the recipe's; else every run's epochs")
  parser.add_argument("--torch_modes", default="eager",
                      help="modes of the same-recipe PyTorch run: eager, "
                      "compile (torch.compile of the model), or both")
  parser.add_argument("--torch_precision", default="recipe",
                      help="precisions of the same-recipe PyTorch runs: "
                      "float32, bfloat16 (torch.autocast), or 'recipe': "
                      "both for a recipe whose convolutions multiply in "
                      "bfloat16 (config.train.matmul_precision), else "
                      "float32")
  parser.add_argument("--torch_malloc", default="default,keep",
                      help="allocator settings of the same-recipe PyTorch "
                      "runs: default (glibc's, as PyTorch runs out of the "
                      "box), keep (glibc keeps freed memory, what cnn_jax's "
                      "runs do on the CPU: config.train.cpu_malloc), or both")
  parser.add_argument("--jax_xla_flags", default="",
                      help="';'-separated XLA_FLAGS values: each one more "
                      "cnn_jax run per seed under it (cnn_jax's own row "
                      "runs without XLA_FLAGS)")
  parser.add_argument("--no_torch_own", action="store_true",
                      help="skip PyTorch's own recipe")
  parser.add_argument("--quick", action="store_true",
                      help="seed 0 only, 2 epochs, PyTorch eager")
  parser.add_argument("--worker", choices=("same", "own"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--mode", default="eager", help=argparse.SUPPRESS)
  parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    torch_worker(args.worker, os.path.join(REPO, args.recipe), args.seed,
                 args.epochs, args.mode, args.precision)
    return
  if args.quick:
    args.seeds, args.epochs, args.torch_modes = 1, args.epochs or 2, "eager"
  seeds = list(range(args.seeds))
  try:
    import torch  # pylint: disable=unused-import
    have_torch = True
  except ImportError:
    have_torch = False
  machine_name = machine.description()  # the GPU too, where there is one
  load_before = os.getloadavg()
  print(f"machine: {machine_name}; load average {load_before[0]:.1f}; recipe "
        f"{args.recipe}; seeds {seeds}"
        + ("" if have_torch else "; torch not installed: its runs skipped"),
        flush=True)
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
  # The repository first, then what the caller's path held (wheels a
  # machine's image lacks: experiments/gpu_checks.sh).
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  # name -> (headline key, torch worker kind and mode or None, environment).
  # 'keep': what config.train.cpu_malloc='auto' does in cnn_jax's runs
  # (training/cpu_malloc.py), as environment variables set before Python
  # starts (eager PyTorch page-faults on its activations as XLA:CPU does).
  kept = dict(env, **cpu_malloc.ENVIRONMENT)
  contenders = {"cnn_jax": ("cnn_jax", None, env)}
  # cnn_jax again under other XLA flags (e.g. how long XLA autotunes on a
  # GPU: --xla_gpu_autotune_level=0), each its own row and headline keys.
  for i, flags in enumerate(f for f in args.jax_xla_flags.split(";") if f):
    contenders[f"cnn_jax (XLA_FLAGS={flags})"] = (
        f"cnn_jax_xla_flags_{i}", None, dict(env, XLA_FLAGS=flags))
  precisions = args.torch_precision.split(",")
  if precisions == ["recipe"]:
    bfloat16 = torch_recipe("same", os.path.join(REPO, args.recipe),
                            0)["bfloat16"]
    precisions = ["bfloat16", "float32"] if bfloat16 else ["float32"]
  if set(precisions) - {"float32", "bfloat16"}:
    parser.error(f"--torch_precision: {args.torch_precision!r} is not "
                 "'recipe' or a list of float32, bfloat16")
  if have_torch:
    for mode in args.torch_modes.split(","):
      for precision in precisions:
        for malloc in args.torch_malloc.split(","):
          if malloc not in ("default", "keep"):
            parser.error(f"--torch_malloc: {malloc!r} is not default or keep")
          kept_memory = malloc == "keep"
          bf16 = precision == "bfloat16"
          contenders[f"torch same ({mode}{', autocast bf16' * bf16}"
                     f"{', kept memory' * kept_memory})"] = (
                         f"torch_same_{mode}{'_bf16' * bf16}"
                         f"{'_kept_memory' * kept_memory}",
                         ("same", mode, precision),
                         kept if kept_memory else env)
    if not args.no_torch_own:
      contenders["torch own (eager)"] = ("torch_own",
                                         ("own", "eager", "float32"), env)
  curves = {name: {} for name in contenders}
  print("\n| run | seed | machine | epochs | final test acc | to 99.4% | "
        "to 99.5% | last eval at | s per epoch after the first |")
  print("|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as scratch:
    for seed in seeds:
      for name, (key, torch_run, run_env) in contenders.items():
        if torch_run is None:  # a new folder each: no run resumes another
          command = [sys.executable, "-c", _JAX_RUN,
                     f"--config={args.recipe}",
                     f"--workdir={os.path.join(scratch, f'{key}_{seed}')}",
                     f"--config.seed={seed}",
                     "--config.train.eval_every_epochs=1",
                     "--config.train.compilation_cache=off"]
          if args.epochs:
            command.append(f"--config.train.num_epochs={args.epochs}")
        else:
          kind, mode, precision = torch_run
          command = [sys.executable, os.path.abspath(__file__),
                     f"--worker={kind}", f"--mode={mode}", f"--seed={seed}",
                     f"--precision={precision}",
                     f"--recipe={args.recipe}",
                     f"--epochs={args.epochs}"]
        curve = run(command, run_env)
        curves[name][seed] = curve
        print(f"| {name} | {seed} | {machine_name} | {len(curve)} | "
              f"{curve[-1][1]:.4f} | {show(first_reaching(curve, 0.994))} | "
              f"{show(first_reaching(curve, 0.995))} | "
              f"{curve[-1][2]:.1f} s | {show(epoch_seconds(curve))} |",
              flush=True)
  headline = {}
  print("\n| run | machine | seeds | mean final acc | mean to 99.4% | "
        "mean to 99.5% | cnn_jax's time to 99.4% over this run's | "
        "mean s per epoch | cnn_jax's over this run's |")
  print("|---|---|---|---|---|---|---|---|---|")
  means = {}
  for name, by_seed in curves.items():
    finals = [c[-1][1] for c in by_seed.values()]
    row = {"final": float(np.mean(finals))}
    for target in TARGETS:
      times = [first_reaching(c, target) for c in by_seed.values()]
      # A mean only when every seed got there.
      row[target] = (None if None in times else float(np.mean(times)))
    paces = [epoch_seconds(c) for c in by_seed.values()]
    row["epoch"] = None if None in paces else float(np.mean(paces))
    means[name] = row
  ours = means["cnn_jax"][0.994]
  torch_same = [row[0.994] for name, row in means.items()
                if name.startswith("torch same") and row[0.994] is not None]
  for name, row in means.items():
    key = contenders[name][0]
    to_target = ratio(ours, row[0.994])
    pace = ratio(means["cnn_jax"]["epoch"], row["epoch"])
    print(f"| {name} | {machine_name} | {len(curves[name])} | "
          f"{row['final']:.4f} | "
          f"{show(row[0.994])} | {show(row[0.995])} | "
          f"{show_ratio(to_target)} | {show(row['epoch'])} | "
          f"{show_ratio(pace)} |")
    headline[f"{key}_epoch_s"] = row["epoch"] and round(row["epoch"], 2)
    headline[f"{key}_final_acc"] = round(row["final"], 4)
    headline[f"{key}_to_99.4_s"] = row[0.994] and round(row[0.994], 1)
    headline[f"{key}_to_99.5_s"] = row[0.995] and round(row[0.995], 1)
    if name.startswith("torch same") and to_target is not None:
      headline[f"ratio_to_99.4_vs_{key}"] = to_target
    if name.startswith("torch same") and pace is not None:
      headline[f"epoch_ratio_vs_{key}"] = pace
  if torch_same and ours is not None:  # against the fastest PyTorch run
    headline["ratio_to_99.4_vs_torch_same"] = ratio(ours, min(torch_same))
  headline.update(recipe=args.recipe, seeds=seeds, machine=machine_name,
                  load_avg=[round(load_before[0], 1),
                            round(os.getloadavg()[0], 1)],
                  seconds=round(time.perf_counter() - _START))
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
