"""The first-conv-block kernels (cnn_jax/conv/conv_pool_native.py: conv,
2x2 max-pool, bias, ReLU in one pass each way) against the same function
from XLA's ops: values and gradients to float32 rounding, derivatives of
second order, vmap and data parallelism."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.conv import conv_pool_native
from cnn_jax.conv import onednn_build
from tests.conftest import data_parallel_report
from tests.conftest import require_avx512_kernels
from tests.conftest import run_python


@pytest.fixture(scope="module", autouse=True)
def _needs_the_library():
  require_avx512_kernels()


def _xla_block(x, kernel, bias, dtype):
  """conv (float32, full precision) -> max-pool 2 -> bias -> ReLU -> dtype."""
  y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  return jax.nn.relu(ops.max_pool(y, 2) + bias).astype(dtype)


def _operands(shape, size, features, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, shape[-1], features))
                       * 0.4, jnp.float32)
  # Around zero, so the ReLU zeroes a good share of the windows.
  bias = jnp.asarray(rng.normal(size=features) * 0.5 - 1.0, jnp.float32)
  return x, kernel, bias


def _value_and_gradients(block, x, kernel, bias, g):
  y, vjp = jax.vjp(block, x, kernel, bias)
  return (y, *vjp(g))


def _close(a, b, rtol):
  np.testing.assert_allclose(np.asarray(a, np.float32),
                             np.asarray(b, np.float32), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape, size, features", [
    ((4, 28, 28, 1), 3, 32),   # the MNIST CNN's conv1 block
    ((2, 9, 7, 3), 5, 16),     # odd sizes (the last row/column cropped), RGB
    ((3, 12, 10, 3), 3, 64),   # several groups of 16 channels
])
def test_values_and_gradients_are_the_xla_blocks(shape, size, features,
                                                 dtype):
  x, kernel, bias = _operands(shape, size, features)
  assert conv_pool_native.usable(x.shape, kernel.shape, 1, "SAME", 2, None,
                                 jnp.float32)
  pooled = (shape[0], shape[1] // 2, shape[2] // 2, features)
  g = jnp.asarray(np.random.default_rng(1).normal(size=pooled), dtype)
  native = jax.jit(functools.partial(_value_and_gradients, functools.partial(
      conv_pool_native.conv_max_pool_bias_relu, dtype=dtype)))
  xla = jax.jit(functools.partial(_value_and_gradients, functools.partial(
      _xla_block, dtype=dtype)))
  (y, dx, dk, db), (y_ref, dx_ref, dk_ref, db_ref) = (
      native(x, kernel, bias, g), xla(x, kernel, bias, g))
  assert y.dtype == dtype and y.shape == pooled
  assert dx.shape == x.shape and dk.shape == kernel.shape
  assert db.shape == bias.shape
  # float32 sums in another order: a result may round to the next value.
  ulp = 2.0 ** -7 if dtype == jnp.bfloat16 else 2.0 ** -20
  _close(y, y_ref, ulp)
  same = np.mean(np.asarray(y, np.float32) == np.asarray(y_ref, np.float32))
  assert same > 0.99, same
  live = np.asarray(y, np.float32) > 0
  assert 0.1 < live.mean() < 0.9  # the ReLU zeroes some windows, not all
  for got, want in ((dx, dx_ref), (dk, dk_ref), (db, db_ref)):
    _close(got, want, 1e-5)


def test_usable_names_what_the_kernels_take():
  usable = functools.partial(conv_pool_native.usable, dtype=jnp.float32)
  assert usable((2, 28, 28, 1), (3, 3, 1, 32), 1, "SAME", 2, None)
  assert usable((2, 28, 28, 3), (5, 5, 3, 16), (1, 1), ((2, 2), (2, 2)),
                (2, 2), 2)
  assert not usable((2, 28, 28, 2), (3, 3, 2, 32), 1, "SAME", 2, None)
  assert not usable((2, 28, 28, 1), (3, 3, 1, 24), 1, "SAME", 2, None)
  assert not usable((2, 28, 28, 1), (7, 7, 1, 32), 1, "SAME", 2, None)
  assert not usable((2, 28, 28, 1), (3, 3, 1, 32), 2, "SAME", 2, None)
  assert not usable((2, 28, 28, 1), (3, 3, 1, 32), 1, "VALID", 2, None)
  assert not usable((2, 28, 28, 1), (3, 3, 1, 32), 1, "SAME", 3, 2)
  assert not conv_pool_native.usable((2, 28, 28, 1), (3, 3, 1, 32), 1,
                                     "SAME", 2, None, jnp.bfloat16)


@pytest.mark.parametrize("own_kernels", [False, True])
def test_vmapped_members_match_their_own_blocks(own_kernels):
  """A sweep's members: sharing a kernel they fold into one call; with
  their own kernels (and biases) they run one after another."""
  x, kernel, bias = _operands((3, 4, 8, 8, 1), 3, 16)
  kernels = jnp.stack([kernel * (m + 1) for m in range(3)])
  biases = jnp.stack([bias - 0.1 * m for m in range(3)])
  g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 4, 4, 16)),
                  jnp.float32)
  block = functools.partial(_value_and_gradients,
                            conv_pool_native.conv_max_pool_bias_relu)
  if own_kernels:
    grads = jax.jit(jax.vmap(block))
    args = (x, kernels, biases, g)
  else:
    grads = jax.jit(jax.vmap(block, in_axes=(0, None, None, 0)))
    args = (x, kernel, bias, g)
  results = grads(*args)
  for m in range(3):
    member = (x[m], kernels[m] if own_kernels else kernel,
              biases[m] if own_kernels else bias, g[m])
    expected = _value_and_gradients(
        functools.partial(_xla_block, dtype=jnp.float32), *member)
    for got, want in zip(results, expected):
      _close(got[m], want, 1e-5)
  hlo = grads.lower(*args).as_text()
  assert hlo.count(f"@{onednn_build.CONV_MAX_POOL_FORWARD}(") == 1
  assert hlo.count(f"@{onednn_build.CONV_MAX_POOL_BACKWARD}(") == 1
  assert ("while" in hlo) == own_kernels  # lax.map's loop


def test_second_order_gradients_match_the_xla_block():
  """Reverse over reverse: the kernels' derivatives are XLA's."""
  x, kernel, bias = _operands((2, 8, 8, 1), 3, 16, seed=3)

  def penalty(block, x, kernel, bias):
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(block(*a))),
                     argnums=(0, 1, 2))(x, kernel, bias)
    return sum(jnp.sum(g ** 2) for g in grads) + jnp.sum(grads[0] * x)

  def all_grads(block):
    return jax.jit(jax.grad(functools.partial(penalty, block),
                            argnums=(0, 1, 2)))(x, kernel, bias)

  ours = all_grads(conv_pool_native.conv_max_pool_bias_relu)
  reference = all_grads(functools.partial(_xla_block, dtype=jnp.float32))
  for got, want in zip(ours, reference):
    _close(got, want, 1e-4)


_DATA_PARALLEL = r"""
from cnn_jax.conv import conv_pool_native
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
kernel = (rng.normal(size=(3, 3, 1, 16)) * 0.4).astype(np.float32)
bias = (rng.normal(size=16) * 0.5).astype(np.float32)
def grads(kernel, bias, x):
  block = conv_pool_native.conv_max_pool_bias_relu
  return jax.value_and_grad(
      lambda k, b: jnp.sum(jnp.tanh(block(x, k, b)) * 3.0),
      argnums=(0, 1))(kernel, bias)
step = jax.jit(grads)
args = (jax.device_put(kernel, replicated), jax.device_put(bias, replicated),
        jax.device_put(x, by_batch))
hlo = step.lower(*args).compile().as_text()
value, (dk, db) = step(*args)
ref_value, (ref_dk, ref_db) = jax.jit(grads)(kernel, bias, x)
report = {
    "all_gather": "all-gather" in hlo,
    "local_forward": "(f32[2,3,3,16]{3,2,1,0}, u8[2,3,3,16]{3,2,1,0}) "
                     "custom-call" in hlo,
    "dk_diff": float(np.abs(np.asarray(dk) - np.asarray(ref_dk)).max()),
    "db_diff": float(np.abs(np.asarray(db) - np.asarray(ref_db)).max()),
    "value_diff": float(abs(value - ref_value))}
"""


def test_data_parallel_runs_each_devices_shard_and_sums_the_gradients():
  result = data_parallel_report(_DATA_PARALLEL)
  assert not result["all_gather"], result
  assert result["local_forward"], result
  assert result["dk_diff"] < 1e-5 and result["db_diff"] < 1e-5, result
  assert result["value_diff"] < 1e-3, result


def test_an_avx2_cpu_keeps_the_convolution_and_the_pool():
  """Below AVX-512 the MNIST CNN's conv1 block is a convolution and a pool
  again (here oneDNN capped at AVX2, as on an AVX2-only CPU)."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax.conv import onednn_build\n"
          "from cnn_jax.models import layers\n"
          "x = jnp.ones((2, 28, 28, 1))\n"
          "block = layers.ConvReluMaxPool(32, (3, 3))\n"
          "params = block.init(jax.random.key(0), x)\n"
          "hlo = jax.jit(block.apply).lower(params, x).as_text()\n"
          "print(onednn_build.cpu_isa(),"
          " onednn_build.CONV_MAX_POOL_FORWARD in hlo)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
  assert stdout.split() == ["avx2", "False"], stdout
