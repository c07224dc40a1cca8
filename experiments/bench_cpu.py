"""JAX vs PyTorch training-step throughput on the CPU, side by side.

The MNIST CNN (simple_cnn: conv32-pool-conv64-pool-dense256-dense10, max
pooling, 824,458 parameters) with each of cnn_jax's convolution
implementations (conv_impls.CONV_IMPLS) and the same network in PyTorch,
eager and torch.compile'd (inductor), at batch 32, 128 and 512; then
ResNet-18 (resnet18_cifar, 32x32x3) at batch 128, with all convolutions on
oneDNN ('onednn') and as 'auto' runs them (its wide 3x3 layers as
Winograd's, conv/winograd.py).
One train step = forward, softmax cross-entropy, backward, SGD with momentum
0.9, in float32 on random data (a fixed batch: no input pipeline).

Every variant is built and warmed up first (XLA compiles, PyTorch settles),
then timed in interleaved rounds within this one process, so a change in the
machine's load hits all variants alike (each window after two untimed
steps of its own, so that no variant pays for the heap the previous one
left behind); the table shows the median images/s
over rounds, the spread, and the ratio to the faster PyTorch mode (eager or
compiled, measured in the same run), plus images per CPU-second
(the process's CPU time, robust to other processes taking the cores).

  python experiments/bench_cpu.py            # about 3-4 minutes on 2 cores
  python experiments/bench_cpu.py --quick    # batch 128 only, no ResNet
  python experiments/bench_cpu.py --batches '' --resnet_rounds 5  # ResNet
  python experiments/bench_cpu.py --single_core   # both pinned to one core
  python experiments/bench_cpu.py --quick --bf16  # + bfloat16 compute rows

--bf16 adds two JAX forms of bfloat16: the model computing in bfloat16
('bf16': config.model.dtype) and the float32 model whose convolutions
and dense layers multiply in bfloat16 ('bf16 matmuls': config.train.matmul_precision, JAX's
default_matmul_precision('bfloat16'); oneDNN's bf16 kernels where the CPU
has bf16 instructions), against PyTorch under torch.autocast(bfloat16).

On a shared machine the two-core figures move with the other processes'
load (printed with the results); PyTorch's OpenMP threads lose most when a
core is taken away, so a loaded machine flatters JAX. --single_core pins the
process to one core and PyTorch to one thread, which makes the images per
CPU-second comparable even then.

PyTorch is optional (`pip install torch==2.13.0`, the CPU wheel); without it
its rows are skipped. The last line is one JSON object with the headline
figures.
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import machine  # pylint: disable=g-import-not-at-top
from cnn_jax.conv import conv_impls  # pylint: disable=g-import-not-at-top
from cnn_jax.training import cpu_malloc  # pylint: disable=g-import-not-at-top
from cnn_jax.training import matmul_precision as precision_setting  # pylint: disable=g-import-not-at-top
from cnn_jax.models import MODELS  # pylint: disable=g-import-not-at-top

try:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None

LEARNING_RATE = 0.01
MOMENTUM = 0.9


def jax_train_step(model_name, impl, batch, image_shape, num_classes=10,
                   seed=0, dtype=jnp.float32, learning_rate=LEARNING_RATE,
                   matmul_precision=None):
  """A `run(n)` that does n jitted train steps of MODELS[model_name]
  (computing in `dtype`, convolutions by `impl`, traced under JAX's
  `matmul_precision`); the batch lives on device. Also
  experiments/bench_gpu.py's JAX side."""
  model = MODELS[model_name](num_classes=num_classes, dtype=dtype)
  tx = optax.sgd(learning_rate, momentum=MOMENTUM)
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.random((batch, *image_shape), np.float32))
  labels = jnp.asarray(rng.integers(0, num_classes, batch))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), images[:1])
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": batch_stats}, images, train=True,
          mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), updates.get("batch_stats", batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  state = [params, batch_stats, tx.init(params)]
  # Read when traced; None keeps JAX's own precision setting.
  with conv_impls.default_conv_impl_scope(impl), (
      precision_setting.context(matmul_precision)):
    compiled = step.lower(*state, images, labels).compile()

  def run(n):
    for _ in range(n):
      *new_state, loss = compiled(*state, images, labels)
      state[:] = new_state
    loss.block_until_ready()

  return run


def torch_simple_cnn():
  """simple_cnn in PyTorch: same layers, sizes and initial-value scale."""
  return tnn.Sequential(
      tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
      tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
      tnn.Flatten(), tnn.Linear(3136, 256), tnn.ReLU(), tnn.Linear(256, 10))


class _TorchBasicBlock(tnn.Module if torch else object):
  """torchvision's BasicBlock (as cnn_jax.models.resnet.BasicBlock)."""

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(c_out)
    self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(c_out)
    self.shortcut = tnn.Identity()
    if stride != 1 or c_in != c_out:
      self.shortcut = tnn.Sequential(
          tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
          tnn.BatchNorm2d(c_out))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def torch_resnet18_cifar(num_classes=10):
  """resnet18_cifar in PyTorch: conv3x3 stem, no max-pool, 4 stages."""
  blocks, c_in = [], 64
  for i, c_out in enumerate((64, 128, 256, 512)):
    for j in range(2):
      blocks.append(_TorchBasicBlock(c_in, c_out, 2 if i > 0 and j == 0
                                     else 1))
      c_in = c_out
  return tnn.Sequential(
      tnn.Conv2d(3, 64, 3, 1, 1, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(),
      *blocks, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
      tnn.Linear(512, num_classes))


def torch_train_step(make_model, batch, image_shape, num_classes=10, seed=0,
                     bfloat16=False, compiled=False):
  """A `run(n)` that does n PyTorch train steps (NCHW input); with
  `bfloat16`, the forward pass under torch.autocast (bfloat16 on the CPU).
  Eager, or with `compiled` the whole step (forward, loss, backward,
  optimizer) as one torch.compile'd function (inductor: C++/OpenMP kernels
  built with the machine's g++; the first call compiles)."""
  torch.manual_seed(seed)
  model = make_model()
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE,
                        momentum=MOMENTUM)
  h, w, c = image_shape
  images = torch.rand(batch, c, h, w)
  labels = torch.randint(0, num_classes, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
      loss = tnn.functional.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()

  if compiled:
    step = torch.compile(step)

  def run(n):
    for _ in range(n):
      step()

  return run


def torch_runs(make_model, batch, image_shape, modes, bfloat16=False):
  """{'torch' (eager), 'torch compile': run} for the modes asked for (with
  ' bf16' appended under `bfloat16`)."""
  suffix = " bf16" if bfloat16 else ""
  runs = {}
  if "eager" in modes:
    runs["torch" + suffix] = torch_train_step(make_model, batch, image_shape,
                                              bfloat16=bfloat16)
  if "compile" in modes:
    runs["torch compile" + suffix] = torch_train_step(
        make_model, batch, image_shape, bfloat16=bfloat16, compiled=True)
  return runs


def torch_anchor(results, suffix=""):
  """(name, img/s) of the faster PyTorch mode in `results`, or (None, None):
  what JAX is compared with."""
  modes = [name for name in ("torch" + suffix, "torch compile" + suffix)
           if name in results]
  if not modes:
    return None, None
  best = max(modes, key=lambda name: results[name][0])
  return best, results[best][0]


def measure(runs, batch, rounds, window_s, warmup_s):
  """Interleaved timing: {name: (median img/s, min, max, img per CPU-s)}."""
  steps = {}
  for name, run in runs.items():
    run(1)
    t = time.perf_counter()
    run(1)
    per_step = max(time.perf_counter() - t, 1e-4)
    steps[name] = max(1, int(window_s / per_step))
  # PyTorch needs a few seconds of steps before its speed settles.
  end = time.perf_counter() + warmup_s
  while time.perf_counter() < end:
    for name, run in runs.items():
      run(1)
  wall = {name: [] for name in runs}
  cpu = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      n = steps[name]
      # Two untimed steps first: the variants share this process's heap
      # (training/cpu_malloc.py keeps it), and the one before may have
      # split the free blocks this one's temporaries came from, which its
      # next steps would page in again (two: XLA frees a step's
      # temporaries after the next step has allocated its own); a run of
      # one network does that once, at its start.
      run(2)
      t, c = time.perf_counter(), time.process_time()
      run(n)
      wall[name].append(batch * n / (time.perf_counter() - t))
      cpu[name].append(batch * n / max(time.process_time() - c, 1e-9))
  return {name: (float(np.median(wall[name])), float(min(wall[name])),
                 float(max(wall[name])), float(np.median(cpu[name])))
          for name in runs}


def print_table(title, results, batch):
  """The table; 'vs torch' is against the faster PyTorch mode (eager or
  torch.compile) of the same precision."""
  print(f"\n{title}, batch {batch}")
  print("| variant | img/s (median) | min-max | vs faster torch | "
        "img per CPU-s |")
  print("|---|---|---|---|---|")
  for name, (median, low, high, per_cpu) in results.items():
    torch_speed = torch_anchor(results, " bf16" if "bf16" in name else "")[1]
    ratio = f"{median / torch_speed:.2f}" if torch_speed else "-"
    print(f"| {name} | {median:,.0f} | {low:,.0f}-{high:,.0f} | {ratio} | "
          f"{per_cpu:,.0f} |")
  sys.stdout.flush()




def _bf16_matmul_headline(headline, results, suffix, best_torch_bf16):
  """'jax auto bf16 matmuls' over JAX's float32 step and over the faster
  PyTorch autocast mode, into `headline` (keys ending in `suffix`)."""
  if "jax auto bf16 matmuls" not in results:
    return
  speed = results["jax auto bf16 matmuls"][0]
  headline[f"bf16_matmuls_img_s{suffix}"] = round(speed, 1)
  headline[f"bf16_matmuls_over_f32{suffix}"] = round(
      speed / results["jax auto"][0], 2)
  if best_torch_bf16:
    headline[f"ratio_bf16_matmuls{suffix}"] = round(speed / best_torch_bf16,
                                                    2)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="32,128,512",
                      help="comma-separated MNIST batch sizes ('' skips MNIST)")
  parser.add_argument("--impls", default=",".join(
      i for i in conv_impls.CONV_IMPLS if i != "auto") + ",auto",
                      help="cnn_jax conv implementations to time")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--window", type=float, default=0.4,
                      help="seconds per variant per round")
  parser.add_argument("--resnet_impls", default="onednn,auto",
                      help="cnn_jax conv implementations for ResNet-18 "
                      "('auto' runs its wide 3x3 layers as Winograd's, "
                      "'onednn' all on oneDNN)")
  parser.add_argument("--resnet_rounds", type=int, default=3,
                      help="interleaved rounds of ResNet-18, each ~3 s of "
                      "steps per variant")
  parser.add_argument("--resnet_batch", type=int, default=128,
                      help="ResNet-18 batch size; 0 skips ResNet")
  parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                      help="keep: cpu_malloc.keep_freed_memory() for the "
                      "whole process (both frameworks); default: glibc's")
  parser.add_argument("--bf16", action="store_true",
                      help="also time bfloat16 compute: JAX (each of "
                      "--impls) with the model in bfloat16 (float32 "
                      "parameters), JAX 'auto' with matmul precision "
                      "bfloat16, vs PyTorch autocast(bfloat16)")
  parser.add_argument("--torch_modes", default="eager,compile",
                      help="PyTorch modes to time: eager, compile "
                      "(torch.compile, inductor; ~1 min to compile each "
                      "network on 2 cores); ratios are against the faster")
  parser.add_argument("--single_core", action="store_true",
                      help="pin the process to one core, PyTorch to 1 thread")
  parser.add_argument("--quick", action="store_true",
                      help="batch 128 only, 3 rounds, no ResNet")
  args = parser.parse_args()
  if args.quick:
    args.batches, args.rounds, args.resnet_batch = "128", 3, 0
  start = time.time()
  if args.single_core and len(os.sched_getaffinity(0)) > 1:
    # Pinned, then started again: oneDNN's OpenMP runtime sizes its thread
    # team when it loads (at this module's imports), so pinning this process
    # left it 2 threads on 1 core (JAX's MNIST step at 1,564 instead of
    # 6,001 img/s on the EPYC). A new process sizes every pool for one core.
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.execv(sys.executable, [sys.executable] + sys.argv)
  malloc_kept = args.malloc == "keep" and cpu_malloc.keep_freed_memory()
  threads = len(os.sched_getaffinity(0))
  if torch is not None:
    torch.set_num_threads(threads)
  load_before = os.getloadavg()
  print(f"cpu: {machine.cpu_description()}, {threads} logical cores; jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}); torch "
        f"{torch.__version__ if torch else 'not installed: its rows skipped'}"
        f"; malloc: {'keep freed memory' if malloc_kept else 'glibc default'}"
        f"; load average {load_before[0]:.1f}")
  impls = args.impls.split(",")
  modes = args.torch_modes.split(",")
  headline = {}
  for batch in (int(b) for b in args.batches.split(",") if b):
    runs = {}
    for impl in impls:
      runs[f"jax {impl}"] = jax_train_step("simple_cnn", impl, batch,
                                           (28, 28, 1))
    for impl in impls if args.bf16 else ():
      runs[f"jax {impl} bf16"] = jax_train_step(
          "simple_cnn", impl, batch, (28, 28, 1), dtype=jnp.bfloat16)
    if args.bf16 and "auto" in impls:
      runs["jax auto bf16 matmuls"] = jax_train_step(
          "simple_cnn", "auto", batch, (28, 28, 1),
          matmul_precision="bfloat16")
    if torch is not None:
      runs.update(torch_runs(torch_simple_cnn, batch, (28, 28, 1), modes))
      if args.bf16:
        runs.update(torch_runs(torch_simple_cnn, batch, (28, 28, 1), modes,
                               bfloat16=True))
    results = measure(runs, batch, args.rounds, args.window, warmup_s=3.0)
    print_table("MNIST CNN (simple_cnn) train step", results, batch)
    best_bf16 = torch_anchor(results, " bf16")[1]
    if "jax auto bf16" in results and best_bf16:
      headline[f"ratio_bf16_b{batch}"] = round(
          results["jax auto bf16"][0] / best_bf16, 2)
    _bf16_matmul_headline(headline, results, f"_b{batch}", best_bf16)
    jax_auto = results.get("jax auto", next(iter(results.values())))[0]
    headline[f"jax_img_s_b{batch}"] = round(jax_auto)
    headline[f"jax_img_per_cpu_s_b{batch}"] = round(
        results.get("jax auto", next(iter(results.values())))[3])
    best, best_speed = torch_anchor(results)
    if best:
      for name, key in (("torch", "torch_eager"),
                        ("torch compile", "torch_compile")):
        if name in results:
          headline[f"{key}_img_s_b{batch}"] = round(results[name][0])
      headline[f"torch_img_per_cpu_s_b{batch}"] = round(results[best][3])
      headline[f"torch_best_b{batch}"] = best
      headline[f"ratio_b{batch}"] = round(jax_auto / best_speed, 2)
  if args.resnet_batch:
    batch = args.resnet_batch
    runs = {f"jax {impl}": jax_train_step("resnet18_cifar", impl, batch,
                                          (32, 32, 3))
            for impl in args.resnet_impls.split(",")}
    if args.bf16:
      runs["jax auto bf16 matmuls"] = jax_train_step(
          "resnet18_cifar", "auto", batch, (32, 32, 3),
          matmul_precision="bfloat16")
    if torch is not None:
      runs.update(torch_runs(torch_resnet18_cifar, batch, (32, 32, 3), modes))
      if args.bf16:
        runs.update(torch_runs(torch_resnet18_cifar, batch, (32, 32, 3),
                               modes, bfloat16=True))
    results = measure(runs, batch, rounds=args.resnet_rounds, window_s=3.0,
                      warmup_s=0.0)
    print_table("ResNet-18 (resnet18_cifar, 32x32x3) train step", results,
                batch)
    _bf16_matmul_headline(headline, results, "_resnet18",
                          torch_anchor(results, " bf16")[1])
    headline["resnet18_jax_img_s"] = round(results["jax auto"][0], 1)
    if "jax onednn" in results:  # Winograd's share of 'auto' (winograd.py)
      headline["resnet18_auto_over_onednn"] = round(
          results["jax auto"][0] / results["jax onednn"][0], 2)
    best, best_speed = torch_anchor(results)
    if best:
      for name, key in (("torch", "eager"), ("torch compile", "compile")):
        if name in results:
          headline[f"resnet18_torch_{key}_img_s"] = round(results[name][0], 1)
      headline["resnet18_torch_best"] = best
      headline["resnet18_ratio"] = round(results["jax auto"][0] / best_speed,
                                         2)
  headline.update(
      cpu=machine.cpu_description(), threads=threads, jax=jax.__version__,
      torch=torch.__version__ if torch else None, torch_modes=modes,
      malloc="keep" if malloc_kept else "default",
      load_avg=[round(load_before[0], 1), round(os.getloadavg()[0], 1)],
      seconds=round(time.time() - start))
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
