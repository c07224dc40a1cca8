"""Shared fixtures: small MNIST-format data written to a temporary folder."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite spends most of its time compiling many small programs, not
# running them: XLA's backend optimisation level 0 compiles ~1.6x faster
# (same results; tests/test_*.py compare numerics, never timings). Read when
# JAX starts its CPU backend, so set before any test touches a device;
# inherited by the tests' subprocesses. An XLA_FLAGS of your own wins, e.g.
# XLA_FLAGS= python -m pytest (empty) tests with XLA's default optimisation.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


def run_on_cpu_devices(code, devices, timeout=600):
  """Runs Python `code` in a subprocess whose JAX has `devices` CPU devices
  (the count is fixed when JAX starts) and returns its stdout; fails the
  test with the end of its stderr if it exits non-zero."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def write_idx(path, array):
  """Writes a uint8 array as an IDX file (gzipped if path ends in .gz)."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, dtype=">u4").tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_tiny_mnist(path):
  """Writes a learnable 28x28 'MNIST' of 256 train / 100 test images as IDX
  files into `path` (the same images on every call) and returns `path`.

  Class k lights up a bright 6x6 square at a class-specific position, so a
  small CNN separates the classes in a few steps.
  """
  rng = np.random.default_rng(0)

  def make(n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
      r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
      images[i, r:r + 6, c:c + 6] = 255
    return images, labels

  for prefix, n in (("train", 256), ("t10k", 100)):
    images, labels = make(n)
    write_idx(path / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(path / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return path


@pytest.fixture
def tiny_mnist_dir(tmp_path):
  """write_tiny_mnist in the test's temporary folder."""
  return write_tiny_mnist(tmp_path)
