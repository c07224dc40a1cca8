"""The biased pool's native kernels (max_pool_native.max_pool_bias_relu:
pool, bias and ReLU in one pass each way) against XLA's composite of the
same ops: the same values and x-gradients bit for bit, the bias gradient
to float32 rounding (its sums run in another order)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.conv import max_pool_native
from cnn_jax.conv import onednn_build
from tests.conftest import data_parallel_report
from tests.conftest import require_avx512_kernels
from tests.conftest import run_python
from tests.conv.test_max_pool_native import _input
from tests.conv.test_max_pool_native import _xla_max_pool


@pytest.fixture(scope="module", autouse=True)
def _needs_the_library():
  require_avx512_kernels()


def _xla_block(x, bias, window):
  """The same function from XLA's ops: pool, float32 bias, ReLU, rounded to
  x's dtype."""
  y = _xla_max_pool(x, window).astype(jnp.float32)
  return jax.nn.relu(y + bias.astype(jnp.float32)).astype(x.dtype)


def _native_block(x, bias, window):
  return max_pool_native.max_pool_bias_relu(x, bias, window)


def _bias(channels, seed=4):
  # Around zero, so the ReLU zeroes a good share of the windows.
  return jnp.asarray(np.random.default_rng(seed).normal(size=channels) * 0.7,
                     jnp.float32)


def _value_and_gradients(block, x, bias, g):
  y, vjp = jax.vjp(block, x, bias)
  return (y, *vjp(g))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape, window", [
    ((4, 28, 28, 32), (2, 2)),   # the MNIST CNN's first block
    ((3, 14, 14, 64), (2, 2)),   # its second
    ((2, 7, 9, 5), (2, 3)),      # odd sizes (cropped), few channels
    ((2, 9, 9, 17), (3, 3)),     # 3x3 windows, channels not a multiple of 16
])
def test_values_and_gradients_are_the_xla_composites(shape, window, dtype):
  x, bias = _input(shape, dtype), _bias(shape[-1])
  pooled = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  g = jnp.asarray(np.random.default_rng(1).normal(size=pooled), dtype)
  native = jax.jit(functools.partial(
      _value_and_gradients, functools.partial(_native_block, window=window)))
  xla = jax.jit(functools.partial(
      _value_and_gradients, functools.partial(_xla_block, window=window)))
  (y, dx, db), (y_ref, dx_ref, db_ref) = native(x, bias, g), xla(x, bias, g)
  assert y.dtype == dtype and dx.dtype == dtype and db.dtype == jnp.float32
  assert y.shape == pooled and dx.shape == shape and db.shape == bias.shape
  as_f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_array_equal(as_f32(y), as_f32(y_ref))
  np.testing.assert_array_equal(as_f32(dx), as_f32(dx_ref))
  np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-5)
  # The ReLU zeroes some windows, passes others, and the NaN window passes
  # a NaN and no gradient.
  live = as_f32(y) > 0
  assert 0.1 < live.mean() < 0.9
  assert np.isnan(as_f32(y)[0, 0, 0, 0])
  assert np.count_nonzero(as_f32(dx)) == np.count_nonzero(
      np.where(live, as_f32(g), 0.0))


def test_ops_runs_the_kernels_where_they_apply():
  x, bias = _input((2, 8, 8, 16), jnp.float32), _bias(16)
  step = jax.jit(jax.grad(
      lambda x, b: jnp.sum(ops.max_pool_bias_relu(x, b, 2) ** 2),
      argnums=(0, 1)))
  hlo = step.lower(x, bias).as_text()
  assert onednn_build.MAX_POOL_BIAS_RELU in hlo
  assert onednn_build.MAX_POOL_BIAS_RELU_BACKWARD in hlo
  # Overlapping windows (AlexNet's 3/2): XLA's ops, the same function.
  x = _input((2, 9, 9, 16), jnp.float32)
  block = lambda x, b: ops.max_pool_bias_relu(x, b, 3, 2)
  assert onednn_build.MAX_POOL_BIAS_RELU not in jax.jit(block).lower(
      x, bias).as_text()
  expected = jax.nn.relu(ops.max_pool(x, 3, 2) + bias)
  np.testing.assert_array_equal(block(x, bias), expected)


def test_a_bias_of_the_wrong_shape_is_named():
  with pytest.raises(ValueError, match=r"bias of shape \(8,\).*16 channels"):
    ops.max_pool_bias_relu(jnp.ones((2, 4, 4, 16)), jnp.ones(8), 2)


@pytest.mark.parametrize("own_biases", [True, False])
def test_vmapped_members_fold_into_one_call(own_biases):
  """A sweep's members (vmap), each with its own bias or all with one: one
  call each way, each member's results those of its own block."""
  x = _input((3, 4, 6, 6, 16), jnp.float32)  # 3 members of a batch of 4
  bias = jnp.stack([_bias(16, seed) for seed in range(3)])
  g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 3, 3, 16)),
                  jnp.float32)
  block = functools.partial(_value_and_gradients,
                            functools.partial(_native_block, window=(2, 2)))
  if own_biases:
    grads = jax.jit(jax.vmap(block))
  else:
    bias = bias[0]
    grads = jax.jit(jax.vmap(block, in_axes=(0, None, 0)))
  y, dx, db = grads(x, bias, g)
  for m in range(3):
    member_bias = bias[m] if own_biases else bias
    y_m, dx_m, db_m = _value_and_gradients(
        functools.partial(_xla_block, window=(2, 2)), x[m], member_bias, g[m])
    np.testing.assert_array_equal(y[m], y_m)
    np.testing.assert_array_equal(dx[m], dx_m)
    np.testing.assert_allclose(db[m], db_m, rtol=1e-5, atol=1e-5)
  hlo = grads.lower(x, bias, g).as_text()
  assert hlo.count(f"@{onednn_build.MAX_POOL_BIAS_RELU}(") == 1
  assert hlo.count(f"@{onednn_build.MAX_POOL_BIAS_RELU_BACKWARD}(") == 1


def test_second_order_gradients_match_the_xla_composite():
  """Reverse over reverse through the block (its gradient's VJP gathers the
  indexed elements and spreads the bias's cotangent over live windows)."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 16)),
                  jnp.float32)
  bias = _bias(16)

  def penalty(block, x, bias):
    gx, gb = jax.grad(lambda x, b: jnp.sum(jnp.sin(block(x, b))),
                      argnums=(0, 1))(x, bias)
    return jnp.sum(gx ** 2 * x) + jnp.sum(gb ** 2)

  def both(block):
    return jax.jit(jax.grad(functools.partial(penalty, block),
                            argnums=(0, 1)))(x, bias)

  ours = both(functools.partial(_native_block, window=(2, 2)))
  reference = both(functools.partial(_xla_block, window=(2, 2)))
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


_DATA_PARALLEL = r"""
from cnn_jax.conv import max_pool_native
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 6, 6, 5)).astype(np.float32)
bias = (rng.normal(size=5) * 0.5).astype(np.float32)
def grads(x, b):
  block = lambda x, b: max_pool_native.max_pool_bias_relu(x, b, (2, 2))
  return jax.value_and_grad(lambda x, b: jnp.sum(jnp.tanh(block(x, b)) * 3.0),
                            argnums=(0, 1))(x, b)
step = jax.jit(grads)
args = (jax.device_put(x, by_batch), jax.device_put(bias, replicated))
hlo = step.lower(*args).compile().as_text()
value, (dx, db) = step(*args)
ref_value, (ref_dx, ref_db) = jax.jit(grads)(x, bias)
report = {
    "all_gather": "all-gather" in hlo,
    "local_forward": "(f32[2,3,3,5]{3,2,1,0}, u8[2,3,3,5]{3,2,1,0}) "
                     "custom-call" in hlo,
    "dx_spec": list(dx.sharding.spec),
    "dx_diff": float(np.abs(np.asarray(dx) - np.asarray(ref_dx)).max()),
    "db_diff": float(np.abs(np.asarray(db) - np.asarray(ref_db)).max()),
    "value_diff": float(abs(value - ref_value))}
"""


def test_data_parallel_runs_each_devices_shard_and_sums_the_bias_gradient():
  result = data_parallel_report(_DATA_PARALLEL)
  assert not result["all_gather"], result
  assert result["local_forward"], result
  assert result["dx_spec"] == ["data"], result
  assert result["dx_diff"] < 1e-6 and result["db_diff"] < 1e-5, result
  assert result["value_diff"] < 1e-3, result


def test_an_avx2_cpu_runs_the_xla_composite():
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax import ops\n"
          "from cnn_jax.conv import onednn_build\n"
          "x, b = jnp.ones((2, 8, 8, 16)), jnp.zeros(16)\n"
          "hlo = jax.jit(jax.grad(lambda x: ops.max_pool_bias_relu(x, b, 2)"
          ".sum())).lower(x).as_text()\n"
          "print(onednn_build.cpu_isa(),"
          " onednn_build.MAX_POOL_BIAS_RELU in hlo)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
  assert stdout.split() == ["avx2", "False"], stdout
