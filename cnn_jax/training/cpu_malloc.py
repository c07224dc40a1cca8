"""Keep freed memory in the process, so CPU training steps stop page-faulting.

XLA:CPU allocates each call's temporaries (every activation of the step)
afresh. glibc gives the threads that run XLA's programs arenas of their own,
whose heaps are at most 64 MiB: a larger block (the MNIST CNN's 6-step call
needs ~120 MB) is mapped with mmap and unmapped on free, whatever the mmap
threshold says. The next call touches new pages, and the kernel zeroes every
page again: 16,500 page faults per step of the MNIST CNN at batch 256, ~28%
of the step's CPU time spent in the kernel (AMD EPYC Zen 5, 2 cores; eager
PyTorch allocates the same way and pays the same).

`keep_freed_memory` makes every thread allocate from the main heap (one
arena), never with mmap, and never hands the heap's top back to the kernel;
the pages stay mapped between calls. Measured on the same EPYC
(experiments/bench_tta.py's recipe, configs/mnist_tta.py, 3 epochs, three
alternated pairs): 3.55 M -> 0.23 M page faults, system CPU 8.0 -> 1.7 s,
train 7,675 -> 8,545 img/s, wall 34.2 -> 30.9 s. The price: the process
keeps its peak heap, and threads share one arena's lock.

It must happen before JAX starts the threads that run its programs (a
thread keeps the arena it first allocated from): launch.py calls `apply`
first thing, as config.train.cpu_malloc says:
  'auto' (default): keep on a CPU run; on GPU/TPU glibc's defaults are put
    back once the backend is known (`settle`);
  'keep': keep whatever the backend;
  'default': glibc's defaults, untouched.
The same as starting Python with the environment ENVIRONMENT
(MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1).

Trimming is off altogether, not just above 2 GiB (mallopt's largest
threshold): after each float32 step of ResNet-18 at batch 128 with
Winograd's tiles, ~2.5 GB lay free at the heap's top (its 1.37 GB of
temporaries and the space around them), and with a 2 GiB threshold glibc
returned it every step: 150,000-230,000 page faults and ~1.2 s of system
time per ~2.2 s step (AMD EPYC Zen 4, 2 cores); with trimming off, none.
Only glibc is affected; other C libraries (musl, macOS) are left alone.
"""

import ctypes
import ctypes.util
from typing import Optional

SETTINGS = ("auto", "keep", "default")
# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# glibc's defaults, put back by `_restore` (0 arenas: its own limit, 8 per
# core; setting any of these turns off glibc's dynamic mmap threshold, a
# difference that only matters for speed).
_DEFAULTS = ((_M_ARENA_MAX, 0), (_M_MMAP_MAX, 65536),
             (_M_TRIM_THRESHOLD, 128 * 1024))
# A trim threshold of -1 turns trimming off (mallopt(3)); the largest
# positive one, 2**31 - 1, still handed the 2.5 GB free at the top of a
# ResNet-18 step's heap back to the kernel after every step (module doc).
_KEEP = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
# The same for a process not yet started (glibc reads them at its start).
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
               "MALLOC_TRIM_THRESHOLD_": "-1"}


def _mallopt():
  """glibc's mallopt, or None (not glibc)."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return mallopt


def _set(options) -> bool:
  mallopt = _mallopt()
  if mallopt is None:
    return False  # not glibc (musl, macOS): nothing to tune
  return all([bool(mallopt(option, value)) for option, value in options])


def keep_freed_memory() -> bool:
  """Tells glibc malloc to keep large blocks in its main heap; True if it did.

  Call once, early (before JAX runs anything); it changes how the whole
  process allocates from then on.
  """
  return _set(_KEEP)


def _restore() -> bool:
  return _set(_DEFAULTS)


def _backend_started() -> bool:
  """Whether JAX has created its backends (and their threads) already."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started and started())


def check(setting) -> str:
  if setting not in SETTINGS:
    raise ValueError(f"config.train.cpu_malloc={setting!r} is not one of: "
                     f"{', '.join(SETTINGS)}")
  return setting


def apply(setting: str = "auto") -> Optional[str]:
  """Sets the process's allocator as config.train.cpu_malloc = `setting`
  says, before JAX starts: 'kept' when glibc now keeps freed memory, None
  when nothing changed (setting 'default', not glibc, or JAX already running
  its programs' threads, which keep their own arenas)."""
  if check(setting) == "default" or _backend_started():
    return None
  return "kept" if keep_freed_memory() else None


def settle(setting: str, applied: Optional[str], backend: str) -> None:
  """After the backend is known: with 'auto', glibc's defaults again off the
  CPU (an accelerator's host threads allocate little and in parallel)."""
  if applied and setting == "auto" and backend != "cpu":
    _restore()
