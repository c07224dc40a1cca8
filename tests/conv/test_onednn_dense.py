"""Dense layers multiplied by oneDNN in bfloat16 (cnn_jax/conv/onednn_dense.py)
against NumPy references that round the same operands to bfloat16."""

import functools
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_dense
from cnn_jax.models import layers
from tests.conftest import require_native_kernels
from tests.conftest import run_python
from tests.conftest import run_on_cpu_devices

_DENSE = (((1,), (0,)), ((), ()))  # x [M, K] . w [K, N]


@pytest.fixture(scope="module", autouse=True)
def _needs_bf16_instructions():
  require_native_kernels()
  if not onednn_bfloat16.bfloat16_native():
    pytest.skip(f"no bf16 instructions for oneDNN here "
                f"({onednn_build.cpu_isa()})")


@pytest.fixture
def bfloat16_precision():
  with jax.default_matmul_precision("bfloat16"):
    yield


def _normal(shape, seed, scale=1.0):
  return np.asarray(np.random.default_rng(seed).normal(size=shape) * scale,
                    np.float32)


def _bf16(a):
  """Rounded to bfloat16 (nearest even), as float64 for exact references."""
  return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(
      np.float64)


def _dense(x, w):
  return onednn_dense.dot_general(x, w, _DENSE)


def _hlo(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def _calls(hlo):
  return hlo.count(f'custom_call_target="{onednn_build.MATMUL}"')


def test_products_are_bfloat16_products_summed_in_float32(
    bfloat16_precision):
  x, w, dy = (_normal((96, 640), 0), _normal((640, 192), 1, 0.05),
              _normal((96, 192), 2))
  y, vjp = jax.vjp(_dense, x, w)
  dx, dw = vjp(dy)
  chex.assert_shape(y, (96, 192))
  chex.assert_type([y, dx, dw], jnp.float32)
  np.testing.assert_allclose(y, _bf16(x) @ _bf16(w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, _bf16(x).T @ _bf16(dy), rtol=1e-5,
                             atol=1e-4)
  # The input gradient is rounded to bfloat16 once: within half an ulp.
  exact = _bf16(dy) @ _bf16(w).T
  np.testing.assert_allclose(dx, exact, rtol=2**-8, atol=1e-6)
  np.testing.assert_array_equal(dx, _bf16(dx))


def test_a_bfloat16_layer_gets_bfloat16_results():
  x = jnp.asarray(_normal((64, 512), 3), jnp.bfloat16)
  w = jnp.asarray(_normal((512, 640), 4, 0.05), jnp.bfloat16)
  y, vjp = jax.vjp(_dense, x, w)
  dx, dw = vjp(jnp.ones_like(y))
  chex.assert_type([y, dx, dw], jnp.bfloat16)
  assert _calls(_hlo(_dense, x, w)) == 1
  np.testing.assert_allclose(np.asarray(y, np.float64),
                             _bf16(np.asarray(x, np.float32)
                                   @ np.asarray(w, np.float32)),
                             rtol=2**-7, atol=1e-3)


def test_what_stays_in_xla(bfloat16_precision):
  reason = onednn_dense.unusable_reason
  assert reason((256, 3136), (3136, 256), _DENSE, jnp.float32) is None
  assert "float32 precision" in reason((256, 3136), (3136, 256), _DENSE,
                                       jnp.float32, precision="highest")
  assert "flops" in reason((256, 256), (256, 10), _DENSE, jnp.float32)
  assert "dense layer" in reason((8, 64, 32), (32, 64), (((1,), (0,)),
                                                         ((), ())),
                                 jnp.float32)
  assert "float16" in reason((256, 3136), (3136, 256), _DENSE, jnp.float16)
  assert "backend gpu" in reason((256, 3136), (3136, 256), _DENSE,
                                 jnp.float32, backend="gpu")
  x, w = jnp.ones((256, 3136)), jnp.ones((3136, 256))
  assert _calls(_hlo(_dense, x, w)) == 1
  with jax.default_matmul_precision("float32"):
    assert _calls(_hlo(_dense, x, w)) == 0


def test_layers_dense_is_nn_dense_with_the_same_parameters(
    bfloat16_precision):
  x = jnp.asarray(_normal((128, 7, 7, 64), 5)).reshape(128, -1)
  ours, theirs = layers.Dense(256, name="d"), nn.Dense(256, name="d")
  variables = ours.init(jax.random.PRNGKey(0), x)
  chex.assert_trees_all_equal(variables,
                              theirs.init(jax.random.PRNGKey(0), x))
  assert _calls(_hlo(ours.apply, variables, x)) == 1
  with jax.default_matmul_precision("float32"):
    # float32: XLA's dot, the same result bit for bit.
    np.testing.assert_array_equal(ours.apply(variables, x),
                                  theirs.apply(variables, x))
  kernel = variables["params"]["kernel"]
  np.testing.assert_allclose(
      ours.apply(variables, x),
      _bf16(x) @ _bf16(kernel) + np.asarray(variables["params"]["bias"]),
      rtol=1e-5, atol=1e-5)


def _grads(fn, x, w, dy):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(dy))


def test_vmap_shared_kernel_folds_into_one_product(bfloat16_precision):
  x, w, dy = (_normal((3, 128, 512), 6), _normal((512, 256), 7, 0.05),
              _normal((3, 128, 256), 8))
  grads = jax.vmap(functools.partial(_grads, _dense), (0, None, 0))
  y, dx, dw = grads(x, w, dy)
  chex.assert_shape([y, dx, dw],
                    [(3, 128, 256), (3, 128, 512), (3, 512, 256)])
  for m in range(3):
    for ours, theirs in zip((y[m], dx[m], dw[m]),
                            _grads(_dense, x[m], w, dy[m])):
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
  hlo = _hlo(grads, x, w, dy)
  assert _calls(hlo) == 3
  # The forward and input gradient over all 384 rows: 2-D products.
  assert "f32[384,256]{1,0} custom-call" in hlo
  assert "bf16[384,512]{1,0} custom-call" in hlo


def test_vmap_per_member_kernels_is_one_batched_product(bfloat16_precision):
  x, w, dy = (_normal((4, 128, 512), 9), _normal((4, 512, 256), 10, 0.05),
              _normal((4, 128, 256), 11))
  grads = jax.vmap(functools.partial(_grads, _dense))
  y, dx, dw = grads(x, w, dy)
  for m in range(4):
    for ours, theirs in zip((y[m], dx[m], dw[m]),
                            _grads(_dense, x[m], w[m], dy[m])):
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
  assert _calls(_hlo(grads, x, w, dy)) == 3
  # Nested: members x seeds, each with its own kernel.
  nested = jax.vmap(jax.vmap(functools.partial(_grads, _dense),
                             (0, None, 0)), (None, 0, None))
  y2, dx2, dw2 = nested(x, w, dy)
  chex.assert_shape([y2, dx2, dw2],
                    [(4, 4, 128, 256), (4, 4, 128, 512), (4, 4, 512, 256)])
  for i in range(4):
    for m in range(4):
      for ours, theirs in zip((y2[i, m], dx2[i, m], dw2[i, m]),
                              _grads(_dense, x[m], w[i], dy[m])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_second_order_gradients(bfloat16_precision):
  """Reverse over reverse: each product's VJP is made of the other two; at
  bfloat16's precision the result is XLA's float32 one."""
  x, w = _normal((128, 512), 12), _normal((512, 256), 13, 0.05)

  def penalty(dot, x, w):
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(dot(x, w))))(x)
    return jnp.sum(grad ** 2)

  ours = jax.grad(functools.partial(penalty, _dense), (0, 1))(x, w)
  with jax.default_matmul_precision("float32"):
    reference = jax.grad(functools.partial(penalty, jnp.dot), (0, 1))(x, w)
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * np.abs(b).max())


_DATA_PARALLEL = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from cnn_jax.conv import onednn_dense
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 640)).astype(np.float32)
w = (rng.normal(size=(640, 256)) * 0.05).astype(np.float32)
dense = lambda x, w: onednn_dense.dot_general(x, w, (((1,), (0,)), ((), ())))
loss = lambda x, w: jnp.sum(jnp.tanh(dense(x, w)))
with jax.default_matmul_precision("bfloat16"):
  step = jax.jit(jax.grad(loss, (0, 1)))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  ws = jax.device_put(w, NamedSharding(mesh, P()))
  hlo = step.lower(xs, ws).compile().as_text()
  dx, dw = step(xs, ws)
  ref_dx, ref_dw = step(x, w)
print(json.dumps({
    "all_gather": "all-gather" in hlo,
    "all_reduces": hlo.count("all-reduce("),
    "local_forward": "f32[64,256]{1,0} custom-call" in hlo,
    "dx_spec": list(dx.sharding.spec),
    "dx_diff": float(np.abs(np.asarray(dx) - np.asarray(ref_dx)).max()),
    "dw_diff": float(np.abs(np.asarray(dw) - np.asarray(ref_dw)).max())}))
"""


def test_data_parallel_multiplies_each_devices_shard():
  stdout = run_on_cpu_devices(_DATA_PARALLEL, devices=4, timeout=300)
  result = json.loads(stdout.strip().splitlines()[-1])
  assert not result["all_gather"], result
  assert result["all_reduces"] == 1, result  # the kernel gradient's sum
  assert result["local_forward"], result
  assert result["dx_spec"] == ["data"], result
  assert result["dx_diff"] == 0.0 and result["dw_diff"] < 1e-4, result


def test_without_bf16_instructions_xla_multiplies():
  """Capped at AVX2 (an AVX2-only CPU: no bf16 instructions), a float32
  layer under bfloat16 precision keeps XLA's dot."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax.conv import onednn_build, onednn_dense\n"
          "dn = (((1,), (0,)), ((), ()))\n"
          "x, w = jnp.ones((256, 3136)), jnp.ones((3136, 256))\n"
          "with jax.default_matmul_precision('bfloat16'):\n"
          "  hlo = jax.jit(lambda x, w: onednn_dense.dot_general(x, w, dn))"
          ".lower(x, w).as_text()\n"
          "  reason = onednn_dense.unusable_reason(x.shape, w.shape, dn, "
          "jnp.float32)\n"
          "print(onednn_build.MATMUL in hlo, '|', reason)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
  assert stdout.strip() == (
      "False | oneDNN has no bf16 instructions here (avx2)"), stdout


def test_the_custom_call_names_bad_shapes():
  onednn_build.library()
  call = jax.ffi.ffi_call(onednn_build.MATMUL,
                          jax.ShapeDtypeStruct((4, 5), jnp.float32))
  with pytest.raises(Exception, match="oneDNN matmul: shapes do not multiply"):
    jax.block_until_ready(call(jnp.ones((4, 3)), jnp.ones((2, 5)),
                               transpose_a=np.int64(0),
                               transpose_b=np.int64(0)))
