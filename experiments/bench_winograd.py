"""Winograd convolutions against oneDNN's on the CPU: from XLA's parts and native.

ResNet-18's float32 train step on the CPU is four fifths convolutions that
already run near the machine's float32 peak (README, Speed: "What 1.3x would
take"), so beating PyTorch by 1.3x needs fewer flops: Winograd's F(m x m,
3 x 3) multiplies 2.25x (m=2) or 4x (m=4) fewer times than a direct 3x3
convolution. oneDNN 3.2 has no float32 Winograd kernels for AVX-512. This
benchmark first builds them from XLA's own parts: the input and output
transforms as slices and adds (fused by XLA), the (m+2)^2 products as one
batched matmul, gradients by autodiff (they are Winograd products too).
Those transforms turned out slower than the products they save, so
cnn_jax runs F(4x4) with native transforms (cnn_jax/conv/winograd.py),
timed here too ('native F(4x4)', on AVX-512 CPUs).

For each stride-1 3x3 layer of ResNet-18 on 32x32 images (batch 128 by
default), one jitted pass = forward, input gradient and kernel gradient,
timed interleaved against the 'onednn' convolution of the same layer in
the same run. Columns: the median milliseconds of each, their ratio (above
1: Winograd faster), the batched matmul alone (the three (m+2)^2-way
products of forward and both gradients with the transforms left out: what
the XLA route could reach with free transforms), and the largest relative
difference from oneDNN's results; then cnn_jax's native F(4x4).

  python experiments/bench_winograd.py              # batch 128, 5 rounds
  python experiments/bench_winograd.py --batch 32 --rounds 3
  python experiments/bench_winograd.py --tiles 4   # no XLA-built F(2x2)
  python experiments/bench_winograd.py --tiles 4 --bf16  # + oneDNN bf16

--bf16 adds oneDNN's convolution under matmul precision 'bfloat16' (bf16
operands, float32 sums), the rival of float32 F(4x4) in a bf16 run, and
its time over the native F(4x4)'s (above 1: Winograd faster).

Like a training run on the CPU, it keeps freed memory in the process
(training/cpu_malloc.py; --malloc default for glibc's own), so that no
variant pays the page faults of its temporaries on every call.

The last line is one JSON object with the per-layer ratios.
"""

import argparse
import json
import os
import sys
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import machine  # pylint: disable=g-import-not-at-top
from cnn_jax.conv import conv_impls  # pylint: disable=g-import-not-at-top
from cnn_jax.conv import max_pool_native  # pylint: disable=g-import-not-at-top
from cnn_jax.conv import winograd  # pylint: disable=g-import-not-at-top
from cnn_jax.training import cpu_malloc  # pylint: disable=g-import-not-at-top
from cnn_jax.training import matmul_precision  # pylint: disable=g-import-not-at-top

# ResNet-18 (resnet18_cifar) stride-1 3x3 layers: (map size, channels).
LAYERS = ((32, 64), (16, 128), (8, 256), (4, 512))
_NHWC = ("NHWC", "HWIO", "NHWC")
_NATIVE = "native F(4x4)"
_BF16 = "oneDNN bf16"


def winograd_matrices(m):
  """(B^T, G, A^T) of F(m x m, 3 x 3) (Lavin & Gray, 2016)."""
  if m == 2:
    bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
    at = [[1, 1, 1, 0], [0, 1, -1, -1]]
  elif m == 4:
    bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
          [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
          [0, 1, -1, 8, -8, 1]]
  else:
    raise ValueError(f"--tiles: m={m} is not 2 or 4")
  return tuple(np.asarray(a, np.float32) for a in (bt, g, at))


def _combine(parts, coefficients):
  """sum_k coefficients[k] * parts[k], skipping zeros (the transforms are
  sparse, mostly +-1)."""
  total = None
  for c, part in zip(coefficients, parts):
    if c == 0:
      continue
    term = part if c == 1 else -part if c == -1 else part * c
    total = term if total is None else total + term
  return total


def _input_tiles(x, bt, m):
  """B^T d B for every (m+2) x (m+2) tile d of x, padded for 'SAME':
  [(m+2)^2, N * tiles, C]."""
  a = m + 2
  n, h, w, c = x.shape
  th, tw = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, th * m - h + 1), (1, tw * m - w + 1), (0, 0)))
  rows = [xp[:, k:k + m * th:m] for k in range(a)]
  rows = [_combine(rows, bt[i]) for i in range(a)]
  tiles = []
  for row in rows:
    cols = [row[:, :, k:k + m * tw:m] for k in range(a)]
    tiles += [_combine(cols, bt[j]) for j in range(a)]
  return jnp.stack(tiles).reshape(a * a, n * th * tw, c)


def _output_maps(products, at, m, n, h, w):
  """A^T M A for every tile, laid out as the [N, H, W, O] output."""
  a = m + 2
  th, tw = -(-h // m), -(-w // m)
  products = products.reshape(a, a, n, th, tw, -1)
  rows = [_combine([products[k] for k in range(a)], at[i]) for i in range(m)]
  out = jnp.stack([
      jnp.stack([_combine([row[l] for l in range(a)], at[j])
                 for j in range(m)], axis=3)
      for row in rows], axis=2)  # [N, th, m, tw, m, O]
  return out.reshape(n, th * m, tw * m, -1)[:, :h, :w]


def winograd_conv(x, kernel, m=2):
  """A 3x3 'SAME' stride-1 convolution (NHWC x HWIO) as Winograd's
  F(m x m, 3 x 3): the same values as lax.conv_general_dilated up to
  float32 rounding (larger for m=4)."""
  bt, g, at = winograd_matrices(m)
  a = m + 2
  n, h, w, _ = x.shape
  u = jnp.einsum("ik,klcd,jl->ijcd", g, kernel, g).reshape(
      a * a, *kernel.shape[2:])
  products = jnp.einsum("tpc,tcd->tpd", _input_tiles(x, bt, m), u,
                        precision=lax.Precision.HIGHEST)
  return _output_maps(products, at, m, n, h, w)


def onednn_conv(x, kernel):
  return conv_impls.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=_NHWC,
                                         impl="onednn")


def train_pass(conv):
  """Forward, input gradient and kernel gradient of `conv`, jitted."""
  def run(x, kernel, cotangent):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(cotangent))
  return jax.jit(run)


def bfloat16_pass(args):
  """train_pass of the oneDNN convolution compiled under matmul precision
  'bfloat16' (bf16 operands, float32 sums: what config.train.
  matmul_precision='bfloat16' runs), for float32 `args`."""
  with matmul_precision.context("bfloat16"):
    return train_pass(onednn_conv).lower(*args).compile()


def products_only(m, n, h, w, c):
  """The three batched matmuls of a Winograd train pass alone (forward,
  input and kernel gradients), on tiles of the layer's shape."""
  a = m + 2
  tiles = n * -(-h // m) * -(-w // m)
  v = jnp.ones((a * a, tiles, c), jnp.float32)
  u = jnp.ones((a * a, c, c), jnp.float32)
  hi = lax.Precision.HIGHEST

  def run(v, u, dm):
    return (jnp.einsum("tpc,tcd->tpd", v, u, precision=hi),
            jnp.einsum("tpd,tcd->tpc", dm, u, precision=hi),
            jnp.einsum("tpc,tpd->tcd", v, dm, precision=hi))
  return jax.jit(run), (v, u, jnp.ones((a * a, tiles, c), jnp.float32))


def timed(fn, args):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def measure_layer(size, channels, batch, tiles, rounds, rng, bf16=False):
  x = jnp.asarray(rng.standard_normal((batch, size, size, channels)),
                  jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels))
                       / np.sqrt(9 * channels), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  args = (x, kernel, cotangent)
  runs = {"onednn": (train_pass(onednn_conv), args)}
  for m in tiles:
    runs[f"F({m}x{m})"] = (train_pass(lambda x, k, m=m: winograd_conv(x, k, m)),
                           args)
    runs[f"F({m}x{m}) matmuls"] = products_only(m, batch, size, size,
                                                channels)
  if max_pool_native.cpu_supported():
    runs[_NATIVE] = (train_pass(winograd.conv), args)
  if bf16:
    runs[_BF16] = (bfloat16_pass(args), args)
  for fn, fn_args in runs.values():
    jax.block_until_ready(fn(*fn_args))
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (fn, fn_args) in runs.items():
      times[name].append(timed(fn, fn_args))
  reference = runs["onednn"][0](*args)
  errors = {}
  for name in [f"F({m}x{m})" for m in tiles] + [_NATIVE, _BF16]:
    if name in runs:
      got = runs[name][0](*args)
      errors[name] = max(float(jnp.max(jnp.abs(r - g)) / jnp.max(jnp.abs(r)))
                         for r, g in zip(reference, got))
  return {name: float(np.median(t)) * 1e3 for name, t in times.items()}, errors


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--tiles", default="2,4",
                      help="Winograd output tile sizes m (2 and/or 4)")
  parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                      help="keep: cpu_malloc.keep_freed_memory(), as a "
                      "training run on the CPU does (launch.py); default: "
                      "glibc's, which maps and zeroes every call's "
                      "temporaries afresh")
  parser.add_argument("--bf16", action="store_true",
                      help="also oneDNN's bfloat16 convolution (matmul "
                      "precision 'bfloat16'), against the native F(4x4)")
  args = parser.parse_args()
  malloc_kept = args.malloc == "keep" and cpu_malloc.keep_freed_memory()
  tiles = [int(m) for m in args.tiles.split(",")]
  for m in tiles:
    winograd_matrices(m)  # a bad --tiles fails before any compilation
  cpu = machine.cpu_description()
  print(f"cpu: {cpu}; load average {os.getloadavg()[0]:.1f}; batch "
        f"{args.batch}; forward + input and kernel gradients per layer; "
        f"malloc: {'keep freed memory' if malloc_kept else 'glibc default'}")
  print("\n| layer | oneDNN ms | " + " | ".join(
      f"F({m}x{m}) ms | oneDNN / F({m}x{m}) | its matmuls alone ms | "
      f"oneDNN / matmuls | max rel. diff" for m in tiles)
        + f" | {_NATIVE} ms | oneDNN / it | max rel. diff |"
        + (f" {_BF16} ms | it / {_NATIVE} | max rel. diff |" * args.bf16))
  print("|---|---:|" + "---:|---:|---:|---:|---:|" * len(tiles)
        + "---:|---:|---:|" + "---:|---:|---:|" * args.bf16)
  rng = np.random.default_rng(0)
  headline = {"cpu": cpu, "batch": args.batch,
              "malloc": "keep" if malloc_kept else "default"}
  for size, channels in LAYERS:
    ms, errors = measure_layer(size, channels, args.batch, tiles,
                               args.rounds, rng, args.bf16)
    cells = [f"{size}x{size}x{channels}", f"{ms['onednn']:.1f}"]
    for m in tiles:
      wino, mats = ms[f"F({m}x{m})"], ms[f"F({m}x{m}) matmuls"]
      cells += [f"{wino:.1f}", f"{ms['onednn'] / wino:.2f}", f"{mats:.1f}",
                f"{ms['onednn'] / mats:.2f}", f"{errors[f'F({m}x{m})']:.1e}"]
      headline[f"F{m}_over_onednn_{size}x{size}x{channels}"] = round(
          ms["onednn"] / wino, 2)
      headline[f"F{m}_matmuls_over_onednn_{size}x{size}x{channels}"] = round(
          ms["onednn"] / mats, 2)
    if _NATIVE in ms:
      cells += [f"{ms[_NATIVE]:.1f}", f"{ms['onednn'] / ms[_NATIVE]:.2f}",
                f"{errors[_NATIVE]:.1e}"]
      headline[f"native_F4_over_onednn_{size}x{size}x{channels}"] = round(
          ms["onednn"] / ms[_NATIVE], 2)
    else:
      cells += ["-", "-", "-"]
    if args.bf16:
      # Above 1: the native float32 Winograd is the faster of the two.
      native = ms.get(_NATIVE)
      cells += [f"{ms[_BF16]:.1f}",
                f"{ms[_BF16] / native:.2f}" if native else "-",
                f"{errors[_BF16]:.1e}"]
      if native:
        headline[f"bf16_over_native_F4_{size}x{size}x{channels}"] = round(
            ms[_BF16] / native, 2)
    print("| " + " | ".join(cells) + " |", flush=True)
  headline["load_avg"] = round(os.getloadavg()[0], 1)
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
