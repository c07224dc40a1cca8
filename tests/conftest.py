"""Shared fixtures: small MNIST-format data written to a temporary folder,
and the tiny run that the resume and fault tests compare (tests/tiny_run.py)."""

import gzip
import json
import os
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
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


def require_native_kernels():
  """Skips the calling test where the native kernels (oneDNN convolutions,
  matmuls, max-pool) cannot be built here (CNN_JAX_ONEDNN=0, or a platform
  setup.cfg installs no oneDNN on); fails it with the reason on Linux
  x86-64, where setup.cfg installs oneDNN and a missing build is a bug."""
  from cnn_jax.conv import onednn_build  # pylint: disable=import-outside-toplevel
  reason = onednn_build.unavailable_reason()
  if reason is None:
    return
  if (sys.platform.startswith("linux") and os.uname().machine == "x86_64"
      and "CNN_JAX_ONEDNN=0" not in reason):
    pytest.fail(f"native kernels unavailable: {reason}")
  pytest.skip(reason)


def require_avx512_kernels():
  """`require_native_kernels`, and skips the calling test where oneDNN
  dispatches below AVX-512 (an AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2): the
  native pooling, first-conv-block and Winograd kernels are AVX-512 code
  (max_pool_native.cpu_supported)."""
  require_native_kernels()
  from cnn_jax.conv import max_pool_native  # pylint: disable=import-outside-toplevel
  from cnn_jax.conv import onednn_build  # pylint: disable=import-outside-toplevel
  if not max_pool_native.cpu_supported():
    pytest.skip(f"the kernels are AVX-512 code; oneDNN's ISA here is "
                f"{onednn_build.cpu_isa()}")


def run_python(code, timeout=600, **environment):
  """Runs Python `code` in a subprocess on JAX's CPU backend, with these
  extra environment variables (read when JAX or oneDNN starts, e.g.
  ONEDNN_MAX_CPU_ISA="AVX2"), and returns its stdout; fails the test with
  the end of its stderr if it exits non-zero."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **environment)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def run_on_cpu_devices(code, devices, timeout=600):
  """`run_python` in a subprocess whose JAX has `devices` CPU devices (the
  count is fixed when JAX starts)."""
  return run_python(
      code, timeout,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


_MESH_PRELUDE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh(({devices},), ("data",),
                     axis_types=(jax.sharding.AxisType.Auto,))
by_batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
"""


def data_parallel_report(body, devices=4, timeout=300):
  """Runs `body` in a subprocess with `devices` CPU devices, after a
  prelude that imports json, jax, jnp, np, NamedSharding and P and makes
  `mesh` (one 'data' axis over the devices) and the shardings `by_batch`
  and `replicated`; `body` sets `report`, a JSON-able dict, returned."""
  code = (_MESH_PRELUDE.format(devices=devices) + body
          + "\nprint(json.dumps(report))\n")
  stdout = run_on_cpu_devices(code, devices, timeout)
  return json.loads(stdout.strip().splitlines()[-1])


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


@pytest.fixture(scope="session")
def tiny_run_data(tmp_path_factory):
  """write_tiny_mnist once per session: the data of tests/tiny_run.py."""
  return write_tiny_mnist(tmp_path_factory.mktemp("tiny_run_data"))


@pytest.fixture(scope="session")
def jit_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jit")


@pytest.fixture(scope="module")
def launch_env(jit_cache_dir):
  """The environment for launch.py subprocesses (modules that run the tiny
  run use it: pytestmark = pytest.mark.usefixtures("launch_env")).

  Their runs, here and in subprocesses, compile the same programs: they
  share one persistent compilation cache, so only the first run pays for
  compiling (switched off again after the module).
  """
  options = {"jax_compilation_cache_dir": str(jit_cache_dir),
             "jax_persistent_cache_min_compile_time_secs": 0,
             "jax_persistent_cache_min_entry_size_bytes": -1}
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield {**os.environ, **{name.upper(): str(value)
                          for name, value in options.items()}}
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def uninterrupted(tiny_run_data, launch_env, tmp_path_factory):
  """The workdir of the tiny run (tests/tiny_run.py) trained in this process
  and never stopped: what every stopped, killed and resumed run must equal."""
  del launch_env  # requested for its cache
  # Here, not at the top: tests/tiny_run.py imports this file.
  from cnn_jax.training import train  # pylint: disable=g-import-not-at-top
  from tests import tiny_run  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  train.train_and_evaluate(tiny_run.config(tiny_run_data), str(workdir))
  return workdir
