"""The native max-pooling kernels (cnn_jax/conv/max_pool_native.py) against
ops.max_pool's XLA path: the same values and gradients, bit for bit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.conv import max_pool_native
from cnn_jax.conv import onednn_build
from cnn_jax.ops import pooling
from tests.conftest import data_parallel_report
from tests.conftest import require_avx512_kernels
from tests.conftest import run_python


@pytest.fixture(scope="module", autouse=True)
def _needs_the_library():
  require_avx512_kernels()


def _xla_max_pool(x, window):
  """ops.max_pool's XLA path (the tiles' elementwise max, custom VJP)."""
  tiles, axes = pooling._tile_windows(x, window)  # pylint: disable=protected-access
  return pooling._tiled_max(tiles, axes, tuple(  # pylint: disable=protected-access
      tiles.shape[a] for a in axes))


def _input(shape, dtype, seed=0):
  """Random values with exact ties and a NaN in some windows."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  cols = shape[2] // 2
  x[:, :, 1:2 * cols:2] = x[:, :, 0:2 * cols:2]  # ties in 2-wide windows
  x[0, 0, 0, 0] = np.nan
  x[-1, -1, -1, -1] = -np.inf
  return jnp.asarray(x, dtype)


def _value_and_gradient(pool, x, g):
  y, vjp = jax.vjp(pool, x)
  return y, vjp(g)[0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape, window", [
    ((4, 28, 28, 32), (2, 2)),   # the MNIST CNN's first pool
    ((3, 14, 14, 64), (2, 2)),   # its second
    ((2, 7, 9, 5), (2, 3)),      # odd sizes (cropped), few channels
    ((2, 9, 9, 17), (3, 3)),     # 3x3 windows, channels not a multiple of 16
])
def test_values_and_gradients_are_the_xla_paths(shape, window, dtype):
  x = _input(shape, dtype)
  assert max_pool_native.usable(x, window)
  pooled = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  g = jnp.asarray(np.random.default_rng(1).normal(size=pooled), dtype)
  native = jax.jit(functools.partial(
      _value_and_gradient, lambda x: max_pool_native.max_pool(x, window)))
  xla = jax.jit(functools.partial(
      _value_and_gradient, lambda x: _xla_max_pool(x, window)))
  (y, dx), (y_ref, dx_ref) = native(x, g), xla(x, g)
  assert y.dtype == dtype and dx.dtype == dtype
  assert y.shape == pooled and dx.shape == shape
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(y_ref, np.float32))
  np.testing.assert_array_equal(np.asarray(dx, np.float32),
                                np.asarray(dx_ref, np.float32))
  # The NaN window passes no gradient; every other window passes its
  # gradient to exactly one element.
  assert np.isnan(np.asarray(y, np.float32)[0, 0, 0, 0])
  assert np.count_nonzero(np.asarray(dx, np.float32)) == np.count_nonzero(
      np.asarray(g, np.float32)) - (np.asarray(g, np.float32)[0, 0, 0, 0] != 0)


def test_ops_max_pool_runs_the_kernels_on_the_cpu():
  x = _input((2, 8, 8, 16), jnp.float32)
  step = jax.jit(jax.grad(lambda x: jnp.sum(ops.max_pool(x, 2) ** 2)))
  hlo = step.lower(x).as_text()
  assert onednn_build.MAX_POOL_FORWARD in hlo
  assert onednn_build.MAX_POOL_BACKWARD in hlo
  # Where the kernels do not apply, the XLA path: 3 spatial dims, overlapping
  # windows, float16.
  for y in (lambda: ops.max_pool(jnp.ones((1, 4, 4, 4, 2)), 2),
            lambda: ops.max_pool(jnp.ones((1, 5, 5, 2)), 3, 2),
            lambda: ops.max_pool(jnp.ones((1, 4, 4, 2), jnp.float16), 2)):
    assert onednn_build.MAX_POOL_FORWARD not in jax.jit(y).lower().as_text()


def test_usable_names_what_the_kernels_take():
  usable = max_pool_native.usable
  assert usable(jnp.ones((2, 4, 4, 3)), (2, 2))
  assert usable(jnp.ones((2, 4, 4, 3), jnp.bfloat16), (1, 2))
  assert not usable(jnp.ones((2, 4, 4, 3), jnp.float16), (2, 2))
  assert not usable(jnp.ones((2, 8, 3)), (2,))  # one spatial dim
  assert not usable(jnp.ones((2, 4, 4, 3)), (5, 2))  # larger than the map
  assert not usable(jnp.ones((2, 16, 16, 3)), (16, 16))  # 256 elements


def test_vmapped_members_fold_into_one_call():
  x = _input((3, 4, 6, 6, 16), jnp.float32)  # 3 members of a batch of 4
  g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 3, 3, 16)),
                  jnp.float32)
  pool = lambda x: max_pool_native.max_pool(x, (2, 2))
  grads = jax.jit(jax.vmap(functools.partial(_value_and_gradient, pool)))
  y, dx = grads(x, g)
  for m in range(3):
    y_m, dx_m = _value_and_gradient(lambda x: _xla_max_pool(x, (2, 2)), x[m],
                                    g[m])
    np.testing.assert_array_equal(y[m], y_m)
    np.testing.assert_array_equal(dx[m], dx_m)
  hlo = grads.lower(x, g).as_text()
  assert hlo.count(onednn_build.MAX_POOL_FORWARD) == 1
  assert hlo.count(onednn_build.MAX_POOL_BACKWARD) == 1


_DATA_PARALLEL = r"""
from cnn_jax.conv import max_pool_native
from cnn_jax.ops import pooling
x = np.random.default_rng(0).normal(size=(8, 6, 6, 5)).astype(np.float32)
def grad(pool):
  return jax.value_and_grad(lambda x: jnp.sum(jnp.tanh(pool(x)) * 3.0))
def xla_pool(x):
  tiles, axes = pooling._tile_windows(x, (2, 2))
  return pooling._tiled_max(tiles, axes, (2, 2))
step = jax.jit(grad(lambda x: max_pool_native.max_pool(x, (2, 2))))
xs = jax.device_put(x, by_batch)
hlo = step.lower(xs).compile().as_text()
value, dx = step(xs)
ref_value, ref_dx = grad(xla_pool)(x)
report = {
    "all_gather": "all-gather" in hlo,
    "local_forward": "(f32[2,3,3,5]{3,2,1,0}, u8[2,3,3,5]{3,2,1,0}) "
                     "custom-call" in hlo,
    "dx_spec": list(dx.sharding.spec),
    "dx_diff": float(np.abs(np.asarray(dx) - np.asarray(ref_dx)).max()),
    "value_diff": float(abs(value - ref_value))}
"""


def test_data_parallel_pools_each_devices_shard_of_the_batch():
  result = data_parallel_report(_DATA_PARALLEL)
  assert not result["all_gather"], result
  assert result["local_forward"], result
  assert result["dx_spec"] == ["data"], result
  # (tanh and the sum after the pool fuse differently: float rounding.)
  assert result["dx_diff"] < 1e-6 and result["value_diff"] < 1e-3, result


def test_an_avx2_cpu_keeps_the_xla_path():
  """Below AVX-512 (here: oneDNN capped at AVX2, as on an AVX2-only CPU)
  the kernels are not used; ops.max_pool runs XLA's fusions."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax import ops\n"
          "from cnn_jax.conv import max_pool_native, onednn_build\n"
          "x = jnp.ones((2, 8, 8, 16))\n"
          "hlo = jax.jit(jax.grad(lambda x: ops.max_pool(x, 2).sum()))"
          ".lower(x).as_text()\n"
          "print(onednn_build.cpu_isa(), max_pool_native.cpu_supported(),"
          " max_pool_native.usable(x, (2, 2)),"
          " onednn_build.MAX_POOL_FORWARD in hlo)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
  assert stdout.split() == ["avx2", "False", "False", "False"], (
      stdout)


def test_second_order_gradients_match_the_xla_paths():
  """Reverse over reverse through the pool (its gradient's VJP gathers).
  Without ties: there JAX's maximum splits the tangent, the kernels give it
  to the first element, as their gradient does."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 16)),
                  jnp.float32)

  def penalty(pool, x):
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
    return jnp.sum(grad ** 2 * x)

  ours = jax.jit(jax.grad(functools.partial(
      penalty, lambda x: max_pool_native.max_pool(x, (2, 2)))))(x)
  reference = jax.jit(jax.grad(functools.partial(
      penalty, lambda x: _xla_max_pool(x, (2, 2)))))(x)
  np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
