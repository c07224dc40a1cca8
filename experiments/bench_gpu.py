"""JAX vs PyTorch training-step throughput on a GPU, side by side.

ResNet-50 at 224x224 in bfloat16 (cnn_jax's resnet50 with dtype=bfloat16:
float32 parameters, bfloat16 compute) against torchvision's resnet50 (timm's
if torchvision is missing) in channels_last memory format under
torch.autocast(bfloat16), eager and under torch.compile (inductor: the
model's forward and backward compiled; --torch_modes), with the fused SGD
step where PyTorch has one; then ResNet-18 on CIFAR-sized 32x32 images
(resnet18_cifar) in both. One train step = forward, softmax cross-entropy,
backward, SGD with momentum 0.9 (+ batch-norm statistics), on a fixed random
batch. Variants are compiled / warmed up first, then timed in interleaved
rounds in this one process; the table shows median images/s and the ratio
to the faster PyTorch mode at the same batch (cnn_jax's rows may add larger
batches: --jax_batches).

  python experiments/bench_gpu.py            # about 5 minutes on an H200
  python experiments/bench_gpu.py --smoke    # tiny sizes; runs on a CPU too

Records the device name; the last line is one JSON object with the headline
figures ({"resnet50_ratio": ..., "device": ...}).
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_cpu  # pylint: disable=g-import-not-at-top

try:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None

MOMENTUM = 0.9
LEARNING_RATE = 0.1


class _TorchBottleneck(tnn.Module if torch else object):
  """torchvision's v1.5 Bottleneck (stride in the 3x3 conv)."""

  def __init__(self, c_in, width, stride):
    super().__init__()
    c_out = 4 * width
    self.body = tnn.Sequential(
        tnn.Conv2d(c_in, width, 1, bias=False), tnn.BatchNorm2d(width),
        tnn.ReLU(inplace=True),
        tnn.Conv2d(width, width, 3, stride, 1, bias=False),
        tnn.BatchNorm2d(width), tnn.ReLU(inplace=True),
        tnn.Conv2d(width, c_out, 1, bias=False), tnn.BatchNorm2d(c_out))
    self.shortcut = tnn.Identity()
    if stride != 1 or c_in != c_out:
      self.shortcut = tnn.Sequential(
          tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
          tnn.BatchNorm2d(c_out))

  def forward(self, x):
    return torch.relu(self.body(x) + self.shortcut(x))


def _torch_resnet50(num_classes):
  """The same network as torchvision.models.resnet50 (same 25.6M params)."""
  blocks, c_in = [], 64
  for i, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
    for j in range(count):
      blocks.append(_TorchBottleneck(c_in, width, 2 if i > 0 and j == 0
                                     else 1))
      c_in = 4 * width
  return tnn.Sequential(
      tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64),
      tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2, 1), *blocks,
      tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(2048, num_classes))


def torch_model(name, num_classes):
  """torchvision's resnet50 (else timm's, else the same network defined
  here), or bench_cpu's CIFAR ResNet-18."""
  if name == "resnet18_cifar":
    return bench_cpu.torch_resnet18_cifar(num_classes)
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision.models.resnet50(num_classes=num_classes)
  except ImportError:
    pass
  try:
    import timm  # pylint: disable=g-import-not-at-top
    return timm.create_model("resnet50", num_classes=num_classes)
  except ImportError:
    return _torch_resnet50(num_classes)


def _sgd(params, device):
  """SGD with momentum: the fused CUDA kernel where this PyTorch has one
  (its fastest optimizer step), else its default (foreach) one."""
  if device.type == "cuda":
    try:
      return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM,
                             fused=True)
    except (TypeError, RuntimeError):
      pass
  return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM)


def torch_train_step(name, batch, image_size, num_classes, device,
                     mode="eager"):
  """A `run(n)` doing n steps: channels_last, autocast bfloat16; mode
  'compile': the model under torch.compile (inductor, default mode: its
  forward and backward graphs compiled on the first call)."""
  torch.manual_seed(0)
  model = torch_model(name, num_classes).to(device).to(
      memory_format=torch.channels_last)
  model.train()
  opt = _sgd(list(model.parameters()), device)
  forward = torch.compile(model) if mode == "compile" else model
  images = torch.rand(batch, 3, image_size, image_size, device=device).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,), device=device)

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = tnn.functional.cross_entropy(forward(images), labels)
      loss.backward()
      opt.step()
    if device.type == "cuda":
      torch.cuda.synchronize()

  return run


def measure(runs, rounds, window_s):
  """{name: (median img/s, min, max)} over interleaved rounds; runs:
  {name: (run, batch)}."""
  steps = {}
  for name, (run, _) in runs.items():
    run(2)  # warm-up: autotuning, cuDNN plans, allocator pools
    t = time.perf_counter()
    run(2)
    steps[name] = max(1, int(window_s / max((time.perf_counter() - t) / 2,
                                            1e-4)))
  speeds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (run, batch) in runs.items():
      t = time.perf_counter()
      run(steps[name])
      speeds[name].append(batch * steps[name] / (time.perf_counter() - t))
  return {name: (float(np.median(v)), float(min(v)), float(max(v)))
          for name, v in speeds.items()}


def fastest_torch(results):
  """(name, img/s) of the faster PyTorch mode, or (None, None)."""
  torch_rows = {name: value[0] for name, value in results.items()
                if name.startswith("torch")}
  if not torch_rows:
    return None, None
  name = max(torch_rows, key=torch_rows.get)
  return name, torch_rows[name]


def report(title, results, batches):
  print(f"\n{title}")
  print("| variant | batch | img/s (median) | min-max | vs fastest torch |")
  print("|---|---|---|---|---|")
  _, torch_speed = fastest_torch(results)
  for name, (median, low, high) in results.items():
    ratio = f"{median / torch_speed:.2f}" if torch_speed else "-"
    print(f"| {name} | {batches[name]} | {median:,.0f} | {low:,.0f}-"
          f"{high:,.0f} | {ratio} |")
  sys.stdout.flush()


def _int_list(text):
  return [int(v) for v in text.split(",") if v]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=256,
                      help="ResNet-50 batch size (every row's)")
  parser.add_argument("--cifar_batch", type=int, default=512)
  parser.add_argument("--jax_batches", default="",
                      help="more ResNet-50 batch sizes for cnn_jax's rows "
                      "alone, e.g. 512 (the ratio stays at --batch)")
  parser.add_argument("--models", default="resnet50,resnet18_cifar")
  parser.add_argument("--torch_modes", default="eager,compile",
                      help="PyTorch modes: eager, compile (torch.compile)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--window", type=float, default=2.0,
                      help="seconds per variant per round")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (ResNet-50 at 64x64, batch 2): checks "
                      "that everything runs, on a CPU too")
  args = parser.parse_args()
  modes = [m for m in args.torch_modes.split(",") if m]
  if set(modes) - {"eager", "compile"}:
    parser.error(f"--torch_modes: {args.torch_modes!r} is not a list of "
                 "eager, compile")
  models = [m for m in args.models.split(",") if m]
  if set(models) - {"resnet50", "resnet18_cifar"}:
    parser.error(f"--models: {args.models!r} is not a list of resnet50, "
                 "resnet18_cifar")
  image_size = 224
  extra_batches = _int_list(args.jax_batches)
  if args.smoke:
    args.batch, args.cifar_batch, image_size = 2, 4, 64
    extra_batches = [4] if extra_batches else []
    args.rounds, args.window = 2, 0.1
  start = time.time()
  jax_device = jax.devices()[0]
  torch_device = None
  if torch is not None:
    torch_device = torch.device("cuda" if torch.cuda.is_available() else
                                "cpu")
    torch.backends.cudnn.benchmark = True
  device_name = jax_device.device_kind
  print(f"jax {jax.__version__} on {jax_device.platform}: {device_name}; "
        f"torch {torch.__version__ + ' on ' + str(torch_device) if torch else 'not installed: its rows skipped'}")
  if torch_device is not None and torch_device.type == "cuda":
    print(f"torch device: {torch.cuda.get_device_name()}")

  headline = {}
  for name in models:
    batch, size, classes = ((args.batch, image_size, 1000)
                            if name == "resnet50" else
                            (args.cifar_batch, 32, 10))
    jax_batches = [batch] + ([b for b in extra_batches if b != batch]
                             if name == "resnet50" else [])
    runs = {}
    for b in jax_batches:
      row = "jax bf16" if b == batch else f"jax bf16 (batch {b})"
      runs[row] = (bench_cpu.jax_train_step(
          name, "auto", b, (size, size, 3), classes, dtype=jnp.bfloat16,
          learning_rate=LEARNING_RATE), b)
    if torch is not None:
      for mode in modes:
        runs[f"torch {mode}"] = (torch_train_step(
            name, batch, size, classes, torch_device, mode), batch)
    batches = {row: b for row, (_, b) in runs.items()}
    results = measure(runs, args.rounds, args.window)
    report(f"{name} train step, {size}x{size}, bfloat16", results, batches)
    fastest, torch_speed = fastest_torch(results)
    headline[f"{name}_jax_img_s"] = round(results["jax bf16"][0], 1)
    for row, b in batches.items():
      if row.startswith("jax bf16 (batch"):
        headline[f"{name}_jax_b{b}_img_s"] = round(results[row][0], 1)
    for mode in modes:
      if f"torch {mode}" in results:
        headline[f"{name}_torch_{mode}_img_s"] = round(
            results[f"torch {mode}"][0], 1)
    if fastest is not None:
      headline[f"{name}_fastest_torch"] = fastest
      headline[f"{name}_ratio"] = round(
          results["jax bf16"][0] / torch_speed, 2)
    headline[f"{name}_batch"] = batch
  headline.update(device=device_name, platform=jax_device.platform,
                  jax=jax.__version__,
                  torch=torch.__version__ if torch else None,
                  smoke=args.smoke, seconds=round(time.time() - start))
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
