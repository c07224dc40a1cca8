"""Each oneDNN convolution primitive is checked on this machine before XLA may
run it.

Why: oneDNN picks a different kernel per CPU (AVX2, AVX-512, AMX), and not
every one is right or exists. oneDNN 3.2's AVX2 kernel for the kernel
gradient of a 1x1 stride-2 convolution with fewer than 8 input channels
returns wrong values when it runs on more than one thread (a race: not in
every run), and without bf16 instructions no bfloat16 primitive can be
created at all (issue 17). A wrong gradient trains silently; a creation
failure would stop the run.

So before onednn.py puts a pass (forward, input gradient, kernel gradient) of
a convolution into a program, `rejection()` runs that pass on a small batch
(the geometry with its batch size left out: channels, spatial sizes, window,
strides, padding, dilation, dtype) through the library's C entry point,
twice on each of three seeded random draws, and compares it with a NumPy
reference. The batch holds ~8k input pixels: the AVX2 fault is a race
between threads that a batch of two examples shows only in 5% of runs. The
verdict is kept in memory and in a JSON file beside the compiled library,
keyed by the instruction set oneDNN dispatches to and its thread count, so
each machine pays for a check once (milliseconds to a few tenths of a
second each). A pass that disagrees or cannot be created is logged in one
line and runs as XLA's convolution instead; so does one whose check killed
the process (oneDNN 3.2's AVX2 strided 1x1 kernel gradient crashes or hangs
on 64x64 maps): a marker naming the process is filed before each check, and
a rerun that finds its process dead rejects the pass.

  python -m cnn_jax.conv   # lists the ISA and every verdict
"""

import ctypes
import fcntl
import json
import os
import pathlib
import socket
import threading
from typing import Dict, Optional, Tuple

from absl import logging
import ml_dtypes
import numpy as np

from cnn_jax.conv import onednn_build

# Pass codes of CnnOnednnRunPass, by custom-call target.
PASSES = {onednn_build.FORWARD: 0, onednn_build.BACKWARD_DATA: 1,
          onednn_build.BACKWARD_WEIGHTS: 2}
PASS_NAMES = {onednn_build.FORWARD: "forward",
              onednn_build.BACKWARD_DATA: "input gradient",
              onednn_build.BACKWARD_WEIGHTS: "kernel gradient"}
# A pass's dtype: its operands' and result's ('float32', 'bfloat16'), or
# MIXED: bfloat16 operands, float32 result (onednn.py's float32 convolutions
# under JAX's matmul precision 'bfloat16').
MIXED = "bfloat16>float32"
_DTYPE_CODES = {"float32": 0, "bfloat16": 1, MIXED: 2}
# Largest error allowed, relative to the reference's largest magnitude:
# float32 sums in a different order (~1e-6 here); bfloat16 rounds inputs
# and outputs to 8 bits (~4e-3); MIXED's reference takes the same rounded
# inputs, so only the order of float32 sums differs. Wrong kernels are off
# by 0.1-1.
_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, MIXED: 1e-4}
# The check's batch: as many examples as make about _CHECK_PIXELS input
# pixels (at most 64), run twice per draw. The AVX2 fault is a race between
# threads: in a run of two 8x8 examples it shows 5% of the time, of 16 such
# examples 98%, of 64 100%; 16x16 maps: 16 examples 75%, 64 examples 98%
# (AMD EPYC [avx2 avx512_bf16 avx512f], 2 threads), so a tiny batch would
# let it through by chance. Wide layers, whose NumPy reference would
# dominate, get fewer examples (_CHECK_MACS multiply-adds, but two
# examples). 150 checks of the test suite's geometries take 7.0 s under
# ONEDNN_MAX_CPU_ISA=AVX2 (10.4 s with 16k pixels, 2**27 multiply-adds and
# normal draws), once per machine; the AVX2 rerun of .ci/run with no
# verdicts yet took 125 s against 117 s with the two-example check.
_CHECK_PIXELS, _CHECK_MACS, _CHECK_MAX_BATCH = 8192, 2**25, 64
_CHECK_ELEMENTS = 2**19  # per operand, also at most (drawing them costs)
_RUNS_PER_DRAW = 2
# Part of the verdict file's name: verdicts of an older, weaker check (v1:
# two examples, one run per draw) are not trusted; the passes are checked
# again.
_CHECK_VERSION = 2
_CHECK_SEEDS = (0, 1, 2)

# geometry: (in_sizes, window, strides, pads, dilations), as in onednn.py.
Geometry = Tuple[Tuple, ...]

_lock = threading.Lock()
_verdicts: Dict[str, Optional[str]] = {}  # this process's, by class key
_warned = set()
_loaded_from = None  # the verdict file _verdicts was filled from


def threads() -> int:
  """The OpenMP thread count oneDNN runs with (the AVX2 bug needs > 1)."""
  named = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
  if named.isdigit() and int(named) > 0:
    return int(named)
  return len(os.sched_getaffinity(0))


def verdict_file() -> pathlib.Path:
  """Where this build's verdicts for this ISA and thread count live."""
  library = onednn_build.library_path()
  return library.with_name(
      f"{library.stem}.verdicts-v{_CHECK_VERSION}-{onednn_build.cpu_isa()}"
      f"-t{threads()}.json")


def class_key(target: str, geometry: Geometry, channels: Tuple[int, int],
              dtype: str) -> str:
  """The check's identity: everything but the batch size."""
  in_sizes, window, strides, pads, dilations = geometry
  return (f"{PASS_NAMES[target]} {dtype} in={list(in_sizes)} "
          f"c={channels[0]}->{channels[1]} window={list(window)} "
          f"strides={list(strides)} pads={[list(p) for p in pads]} "
          f"dilations={list(dilations)}")


def rejection(target: str, geometry: Geometry, channels: Tuple[int, int],
              dtype: str, instead: str = "XLA's convolution runs it instead"
              ) -> Optional[str]:
  """None if oneDNN's `target` pass of this convolution may run here, else
  why not (checked on first use on this machine, then remembered; a
  rejection is logged once per kind, with `instead`: what runs instead).

  channels: (C_in, C_out); dtype: 'float32', 'bfloat16' or MIXED.
  """
  key = class_key(target, geometry, channels, dtype)
  with _lock:
    _load_verdicts()
    if key not in _verdicts:
      # Filed before the check runs: if oneDNN kills the process (a kernel
      # can crash as well as be wrong), the rerun finds the marker of a dead
      # process and runs XLA's convolution instead of crashing again.
      _store(key, _checking_marker())
      try:
        _verdicts[key] = check(target, geometry, channels, dtype)
      except BaseException:  # interrupted (Ctrl-C): no verdict either way
        _forget_marker(key)
        raise
      _store(key, _verdicts[key])
    reason = _verdicts[key]
    # One line per kind of failure and pass (a bfloat16 model on a CPU
    # without bf16 would otherwise log every layer); the onednn_build
    # command lists them all.
    kind = (target, dtype, (reason or "").split(" (")[0])
    if reason is not None and kind not in _warned:
      _warned.add(kind)
      logging.warning(
          "oneDNN %s on this CPU (%s): %s "
          "[%s; other geometries alike: python -m cnn_jax.conv]",
          reason, onednn_build.cpu_isa(), instead, key)
  return reason


def verdicts() -> Dict[str, Optional[str]]:
  """Every verdict filed on this machine for this build, ISA and thread
  count: class key -> None (in use) or the reason it is not."""
  with _lock:
    _load_verdicts()
    return dict(_verdicts)


def _load_verdicts():
  global _loaded_from
  path = verdict_file()
  if _loaded_from == path:
    return
  _verdicts.clear()
  for key, value in _read(path).items():
    if value is None or not value.startswith(_CHECKING):
      _verdicts[key] = value
    elif _died(value):
      _verdicts[key] = (f"its check crashed the process running it "
                        f"({value[len(_CHECKING):]})")
      _store(key, _verdicts[key])
    # else: being checked by a live process (or one on another host that
    # shares this file): this process checks it too.
  _loaded_from = path


# The value of a verdict whose check is running: "<_CHECKING>pid N on HOST".
_CHECKING = "being checked by "


def _checking_marker() -> str:
  return f"{_CHECKING}pid {os.getpid()} on {socket.gethostname()}"


def _died(marker: str) -> bool:
  """Whether the process a checking marker names has ended (only a process
  on this host can be seen to have)."""
  try:
    _, pid, _, host = marker[len(_CHECKING):].split(" ", 3)
    pid = int(pid)
  except ValueError:
    return True  # damaged: treated as a check that did not finish
  if host != socket.gethostname():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # another user's live process
  return False


def _read(path: pathlib.Path) -> Dict[str, Optional[str]]:
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}  # none yet, or damaged: checked again
  return {k: v for k, v in stored.items()
          if isinstance(k, str) and (v is None or isinstance(v, str))}


def _store(key: str, reason: Optional[str]):
  """Adds one verdict (or a checking marker) to the file."""
  def add(stored):
    stored[key] = reason
  _edit_file(add)


def _forget_marker(key: str):
  """Removes this process's checking marker of `key` from the file (not
  another process's verdict filed since)."""
  def forget(stored):
    if stored.get(key) == _checking_marker():
      del stored[key]
  _edit_file(forget)


def _edit_file(edit):
  """Applies `edit` to the stored verdicts (other processes may edit at the
  same time: merged under a lock, written by atomic rename)."""
  path = verdict_file()
  try:
    with open(path.with_suffix(".lock"), "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      stored = _read(path)
      edit(stored)
      tmp = path.with_suffix(f".tmp{os.getpid()}")
      tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
      os.replace(tmp, path)
  except OSError as e:  # a read-only cache: checked again next process
    logging.warning("could not save the oneDNN verdict to %s: %s", path, e)


def out_sizes(geometry: Geometry) -> Tuple[int, ...]:
  in_sizes, window, strides, pads, dilations = geometry
  return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, (lo, hi),
               d in zip(in_sizes, window, strides, pads, dilations))


def _windows(geometry: Geometry):
  """(kernel offset, the slices of the padded input it meets) per offset."""
  _, window, strides, _, dilations = geometry
  out = out_sizes(geometry)
  for offset in np.ndindex(*window):
    yield offset, (slice(None),) + tuple(
        slice(o * d, o * d + (m - 1) * s + 1, s)
        for o, d, m, s in zip(offset, dilations, out, strides))


def reference(target: str, geometry: Geometry, a: np.ndarray,
              b: np.ndarray) -> np.ndarray:
  """The pass in NumPy as im2col matrix products (float32 sums; the faults
  it catches are off by far more): forward (x, w) -> y, input gradient
  (dy, w) -> dx, kernel gradient (x, dy) -> dw, all channels-last."""
  in_sizes, window, _, pads, _ = geometry
  a, b = a.astype(np.float32), b.astype(np.float32)
  padded = [(0, 0), *pads, (0, 0)]
  taps = list(_windows(geometry))
  if target == onednn_build.BACKWARD_DATA:  # patches' gradient, scattered
    channels = b.shape[-2]
    patch_grads = (a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T
                  ).reshape(*a.shape[:-1], len(taps), channels)
    dx = np.zeros((a.shape[0], *(n + lo + hi for n, (lo, hi)
                                 in zip(in_sizes, pads)), channels),
                  np.float32)
    for i, (_, where) in enumerate(taps):
      dx[where] += patch_grads[..., i, :]
    return dx[(slice(None),) + tuple(slice(lo, lo + n) for n, (lo, _)
                                     in zip(in_sizes, pads))]
  x = np.pad(a, padded)
  # [N, *out, taps * C]: every input value each output position reads.
  patches = np.stack([x[where] for _, where in taps], axis=-2)
  rows = patches.shape[:-2]
  patches = patches.reshape(int(np.prod(rows)), -1)
  if target == onednn_build.FORWARD:
    return (patches @ b.reshape(-1, b.shape[-1])).reshape(*rows, -1)
  dw = patches.T @ b.reshape(-1, b.shape[-1])
  return dw.reshape(*window, a.shape[-1], b.shape[-1])


def _operand_shapes(target, geometry, channels, batch):
  in_sizes, window = geometry[0], geometry[1]
  c_in, c_out = channels
  x = (batch, *in_sizes, c_in)
  w = (*window, c_in, c_out)
  y = (batch, *out_sizes(geometry), c_out)
  return x, w, y


def numpy_dtypes(dtype: str) -> Tuple[np.dtype, np.dtype]:
  """(operands' dtype, result's dtype) of a pass of `dtype`."""
  bfloat16 = np.dtype(ml_dtypes.bfloat16)
  return {"float32": (np.dtype(np.float32),) * 2,
          "bfloat16": (bfloat16, bfloat16),
          MIXED: (bfloat16, np.dtype(np.float32))}[dtype]


def run(target: str, geometry: Geometry, a: np.ndarray, b: np.ndarray,
        result_shape, dtype: Optional[str] = None) -> np.ndarray:
  """oneDNN's pass on NumPy arrays through CnnOnednnRunPass; raises
  RuntimeError with oneDNN's message when it cannot run. dtype: the pass's
  (None: the operands')."""
  _, _, strides, pads, dilations = geometry
  if dtype is None:
    dtype = np.dtype(a.dtype).name
  result = np.zeros(result_shape, numpy_dtypes(dtype)[1])
  a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
  if target == onednn_build.FORWARD:
    (x, w, y), dims = (a, b, result), (a.shape, b.shape, result.shape)
  elif target == onednn_build.BACKWARD_DATA:
    (x, w, y), dims = (result, b, a), (result.shape, b.shape, a.shape)
  else:
    (x, w, y), dims = (a, result, b), (a.shape, result.shape, b.shape)
  i64 = lambda values: (ctypes.c_int64 * len(values))(*values)
  message = ctypes.create_string_buffer(1024)
  status = onednn_build.library().CnnOnednnRunPass(
      PASSES[target], _DTYPE_CODES[dtype], len(geometry[0]),
      i64(dims[0]), i64(dims[1]), i64(dims[2]), i64(strides),
      i64([lo for lo, _ in pads]), i64([hi for _, hi in pads]),
      i64(dilations), x.ctypes.data_as(ctypes.c_void_p),
      w.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p),
      message, ctypes.c_size_t(len(message)))
  if status != 0:
    raise RuntimeError(message.value.decode(errors="replace"))
  return result


def check_batch(geometry: Geometry, channels: Tuple[int, int]) -> int:
  """How many examples the check runs: enough pixels to show races, within
  a bound on the reference's work."""
  pixels = int(np.prod(geometry[0]))
  macs = pixels * int(np.prod(geometry[1])) * channels[0] * channels[1]
  by_work = max(2, min(_CHECK_MACS // macs,
                       _CHECK_ELEMENTS // (pixels * max(channels))))
  return max(1, min(_CHECK_MAX_BATCH, _CHECK_PIXELS // pixels, by_work))


def check(target: str, geometry: Geometry, channels: Tuple[int, int],
          dtype: str) -> Optional[str]:
  """Runs the pass twice on each of three seeded random draws of a small
  batch (check_batch): None if every run matches the reference, else what
  went wrong."""
  np_dtype = numpy_dtypes(dtype)[0]
  batch = check_batch(geometry, channels)
  x, w, y = _operand_shapes(target, geometry, channels, batch)
  operands, result = {onednn_build.FORWARD: ((x, w), y),
                      onednn_build.BACKWARD_DATA: ((y, w), x),
                      onednn_build.BACKWARD_WEIGHTS: ((x, y), w)}[target]
  worst = 0.0
  for seed in _CHECK_SEEDS:
    rng = np.random.default_rng(seed)
    # Uniform in [-1, 1): 3x faster to draw than normal values in float32
    # (the draws dominated the check's cost), as good at showing a fault.
    a, b = ((2 * rng.random(s, np.float32) - 1).astype(np_dtype, copy=False)
            for s in operands)
    expected = reference(target, geometry, a, b)
    scale = max(float(np.abs(expected).max()), 1e-30)
    for _ in range(_RUNS_PER_DRAW):
      try:
        actual = run(target, geometry, a, b, result, dtype)
      except RuntimeError as e:
        return f"cannot create its {PASS_NAMES[target]} ({e})"
      error = float(np.abs(actual.astype(np.float32) - expected).max()) / scale
      worst = max(worst, error if np.isfinite(error) else float("inf"))
  if worst > _TOLERANCE[dtype]:
    return (f"{PASS_NAMES[target]} disagrees with the reference (largest "
            f"error {worst:.3g} of the largest value)")
  return None
