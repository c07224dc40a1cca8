"""training/cpu_malloc.py: with glibc keeping freed memory, a CPU train step
stops page-faulting on its temporaries; the setting is checked and applied
only before JAX starts, and put back off the CPU under 'auto'."""

import json
import os
import subprocess
import sys

import pytest

from cnn_jax.training import cpu_malloc
from tests.conftest import REPO

# A fresh process (the allocator must be set before JAX starts its
# threads): the MNIST CNN's train step at batch 512, page faults per call
# after a warm-up (the fewest of 4 windows of 10 calls: the heap may still
# grow once or twice), as JSON. (At batch 128 the step's temporaries, smaller
# since the CPU's native max-pool, no longer reach glibc's mmap threshold
# on an AVX-512 CPU: 44 faults per call without the setting.)
_STEP_FAULTS = """
import json, resource, sys
from cnn_jax.training import cpu_malloc
applied = cpu_malloc.apply(sys.argv[1])
from experiments import bench_cpu
run = bench_cpu.jax_train_step("simple_cnn", "auto", 512, (28, 28, 1))
run(10)
windows = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  run(10)
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                  - before) / 10)
print(json.dumps({"applied": applied, "faults": min(windows)}))
"""


def _faults_per_step(setting):
  env = dict(os.environ, PYTHONPATH=REPO)
  for name in cpu_malloc.ENVIRONMENT:
    env.pop(name, None)
  result = subprocess.run([sys.executable, "-c", _STEP_FAULTS, setting],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _transparent_huge_pages_always():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled",
              encoding="utf-8") as f:
      return "[always]" in f.read()
  except OSError:
    return False


# pylint: disable=protected-access
@pytest.mark.skipif(cpu_malloc._mallopt() is None,
                    reason="not glibc: nothing to set")
def test_kept_memory_stops_the_steps_page_faults():
  kept = _faults_per_step("auto")
  assert kept["applied"] == "kept"
  # Page faults left: a few from Python's own objects, none per activation
  # (the step's temporaries are ~20,000 pages).
  assert kept["faults"] < 100, kept
  default = _faults_per_step("default")
  assert default["applied"] is None
  if not _transparent_huge_pages_always():  # huge pages fault 512x less
    assert default["faults"] > 10 * max(kept["faults"], 100), (default, kept)


# A fresh process: the program break after malloc and free of a block larger
# than 2 GiB (mallopt's largest trim threshold) that is never touched, so it
# costs address space and no memory. JSON: how far the heap's top stayed up.
_BREAK_KEPT = """
import ctypes, json, sys
from cnn_jax.training import cpu_malloc
cpu_malloc.apply(sys.argv[1])
libc = ctypes.CDLL(None)
libc.sbrk.restype = libc.malloc.restype = ctypes.c_void_p
libc.sbrk.argtypes = (ctypes.c_long,)
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
start = libc.sbrk(0)
block = libc.malloc(int(sys.argv[2]))
assert block, "malloc failed"
libc.free(block)
print(json.dumps({"kept_bytes": libc.sbrk(0) - start}))
"""


@pytest.mark.skipif(cpu_malloc._mallopt() is None,
                    reason="not glibc: nothing to set")
def test_a_freed_block_over_2_gib_stays_in_the_heap():
  # ~2.5 GB lay free at the top of the heap after each float32 step of
  # ResNet-18 at batch 128; a 2**31 - 1 trim threshold gave it back every
  # step.
  size = 5 * 2**29  # 2.5 GiB
  env = dict(os.environ, PYTHONPATH=REPO)
  for name in cpu_malloc.ENVIRONMENT:
    env.pop(name, None)
  def kept_bytes(setting):
    result = subprocess.run([sys.executable, "-c", _BREAK_KEPT, setting,
                             str(size)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["kept_bytes"]
  # The block reuses what lay free at the heap's top before it (CI's was
  # 32 KiB short of 2.5 GiB): so "kept" means all but that slack, at most
  # glibc's top pad and a page or so.
  slack = 2**20
  assert kept_bytes("keep") >= size - slack
  assert kept_bytes("default") < slack  # glibc's own: mmap, or trimmed


def test_a_setting_that_is_not_known_names_the_config_key():
  with pytest.raises(ValueError, match=r"config.train.cpu_malloc='yes' is not "
                     r"one of: auto, keep, default"):
    cpu_malloc.apply("yes")


def test_too_late_once_jax_runs_and_nothing_for_default(monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  jnp.ones(2).block_until_ready()  # this process's backend has started
  calls = []
  monkeypatch.setattr(cpu_malloc, "_set", lambda options: calls.append(
      options) or True)
  assert cpu_malloc.apply("keep") is None
  assert cpu_malloc.apply("default") is None
  assert not calls


def test_auto_puts_glibc_defaults_back_off_the_cpu(monkeypatch):
  calls = []
  monkeypatch.setattr(cpu_malloc, "_set", lambda options: calls.append(
      dict(options)) or True)
  cpu_malloc.settle("auto", "kept", "cpu")
  cpu_malloc.settle("keep", "kept", "gpu")
  cpu_malloc.settle("auto", None, "gpu")
  assert not calls
  cpu_malloc.settle("auto", "kept", "gpu")
  assert calls == [dict(cpu_malloc._DEFAULTS)]


def test_environment_says_what_keep_freed_memory_sets():
  names = {-8: "MALLOC_ARENA_MAX", -4: "MALLOC_MMAP_MAX_",
           -1: "MALLOC_TRIM_THRESHOLD_"}
  kept = {names[option]: str(value) for option, value in cpu_malloc._KEEP}
  assert kept == cpu_malloc.ENVIRONMENT
