"""Where a JAX train step spends its time on the CPU, by kind of work.

Traces a few train steps of a model (bench_cpu.py's step: forward,
cross-entropy, backward, SGD momentum; float32, random data) with
jax.profiler, reads the per-thunk times of XLA:CPU's executor from the
trace, and groups them by what each thunk is in the compiled program:
the oneDNN convolution passes (custom calls: forward, input gradient,
kernel gradient), XLA's loop fusions (BatchNorm, ReLU, residual adds,
pooling, optimizer), XNNPACK/YNNPACK fusions (dense layers and
per-channel reductions), copies. Then the largest thunks, and the loop
fusions' time by the size of the activation they write.

  python experiments/profile_cpu_step.py       # ResNet-18, 32x32, batch 128
  python experiments/profile_cpu_step.py --model simple_cnn --shape 28x28x1
  JAX_DEFAULT_MATMUL_PRECISION=bfloat16 python experiments/profile_cpu_step.py
      # convolutions multiplied in bfloat16 (config.train.matmul_precision)

Thunk times add up to about the step's wall time (XLA:CPU runs one thunk at
a time here; each uses both cores). Under other processes' load every
thunk stretches; the shares stay comparable. oneDNN's own view of each
primitive: ONEDNN_VERBOSE=1 (prints every call's implementation and time).
The last line is one JSON object with the shares.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_cpu  # pylint: disable=g-import-not-at-top
from experiments import machine  # pylint: disable=g-import-not-at-top


def _compiled_step(model, impl, batch, shape):
  """bench_cpu's `run(n)` and the text of its compiled program."""
  compiled = []
  original = jax.stages.Lowered.compile

  def capture(self, *args, **kwargs):
    compiled.append(original(self, *args, **kwargs))
    return compiled[-1]

  jax.stages.Lowered.compile = capture
  try:
    run = bench_cpu.jax_train_step(model, impl, batch, shape)
  finally:
    jax.stages.Lowered.compile = original
  return run, compiled[-1].as_text()


def _thunk_times(run, steps, log_dir):
  """{thunk name: ms per step} from a jax.profiler trace of `steps` steps."""
  jax.profiler.start_trace(log_dir)
  run(steps)
  jax.profiler.stop_trace()
  path, = glob.glob(f"{log_dir}/plugins/profile/*/*.trace.json.gz")
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  times = collections.defaultdict(float)
  for event in events:
    if event.get("ph") == "X":
      times[event["name"]] += event["dur"] / 1e3 / steps
  return times


def _kinds(hlo_text):
  """{instruction name: (kind of work, result shape)} of the entry
  computation's thunks."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  kinds = {}
  for line in entry.splitlines():
    # The result shape: one array, or a tuple (several results).
    match = re.match(
        r"\s*(?:ROOT )?%(\S+) = (\([^)]*\)|\S+?)(?:\{[^ ]*)? ([\w-]+)\(",
        line)
    if not match:
      continue
    name, shape, op = match.groups()
    shape = re.sub(r"\{[^}]*\}", "", shape)  # without layouts
    target = re.search(r'custom_call_target="([^"]+)"', line)
    if target:
      kind = target.group(1).replace("cnn_onednn_conv_", "oneDNN conv ")
    elif op == "fusion":
      kind = ("XNN/YNN fusion (dense, reductions)" if name.startswith(
          ("ynn", "xnn")) else "XLA loop fusion")
    else:
      kind = f"XLA {op}"
    kinds[name] = (kind, shape)
  return kinds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet18_cifar")
  parser.add_argument("--shape", default="32x32x3", help="H x W x C")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--impl", default="auto", help="conv_impl")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args()
  shape = tuple(int(s) for s in args.shape.split("x"))
  run, hlo_text = _compiled_step(args.model, args.impl, args.batch, shape)
  run(2)
  start = time.perf_counter()
  run(args.steps)
  wall_ms = (time.perf_counter() - start) / args.steps * 1e3
  with tempfile.TemporaryDirectory() as log_dir:
    times = _thunk_times(run, args.steps, log_dir)
  kinds = _kinds(hlo_text)
  by_kind = collections.defaultdict(float)
  by_size = collections.defaultdict(float)
  rows = []
  for name, ms in times.items():
    if name in kinds:
      kind, out_shape = kinds[name]
      by_kind[kind] += ms
      rows.append((ms, name, kind, out_shape))
      if kind == "XLA loop fusion":
        by_size[out_shape] += ms
  total = sum(by_kind.values())
  print(f"{machine.cpu_description()}; load average "
        f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}")
  print(f"{args.model} {args.shape} batch {args.batch}, conv_impl "
        f"{args.impl}: {wall_ms:.0f} ms per step untraced, thunks "
        f"{total:.0f} ms per step traced\n")
  print("| kind of work | ms per step | share |\n|---|---|---|")
  for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
    print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f}% |")
  print("\nXLA loop fusions by result shape (top 6):")
  for out_shape, ms in sorted(by_size.items(), key=lambda kv: -kv[1])[:6]:
    print(f"  {ms:8.1f} ms  {out_shape}")
  print(f"\nlargest {args.top} thunks:")
  for ms, name, kind, out_shape in sorted(rows, reverse=True)[:args.top]:
    print(f"  {ms:8.1f} ms  {name:30s} {kind:28s} {out_shape}")
  print(json.dumps({
      "model": args.model, "batch": args.batch, "wall_ms": round(wall_ms),
      "thunk_ms": round(total), "cpu": machine.cpu_description(),
      "load_avg": round(os.getloadavg()[0], 1),
      "shares": {kind: round(ms / total, 3) for kind, ms in by_kind.items()},
  }))


if __name__ == "__main__":
  main()
