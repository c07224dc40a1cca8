"""Float32 convolutions multiplied in bfloat16 on oneDNN: JAX's matmul
precision 'bfloat16' (cnn_jax/conv/onednn.py, training/matmul_precision.py).

Where oneDNN has bf16 instructions (onednn_bfloat16.bfloat16_native()) the
passes take bfloat16-rounded operands and sum in float32; the forward and input
gradient results are rounded to bfloat16 once, the kernel gradient is not.
Elsewhere (an AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2) the same program runs
in float32, bitwise as without the setting.
"""

import functools
import json

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.conv import onednn
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify
from tests.conftest import run_on_cpu_devices
from tests.conv import test_onednn

# One bfloat16 ulp, relative: where a rounded result may land one step away
# from the reference's rounding of a float32 sum taken in another order.
_BF16_ULP = 2.0 ** -8

_CASES = [  # x shape, kernel shape, strides, padding, dilation
    ((4, 12, 12, 16), (3, 3, 16, 8), (1, 1), "SAME", (1, 1)),
    ((3, 11, 10, 8), (3, 2, 8, 16), (2, 1), ((1, 0), (2, 1)), (1, 1)),
    ((2, 13, 13, 8), (3, 3, 8, 8), (1, 1), "VALID", (2, 2)),
    ((2, 12, 12, 8), (1, 1, 8, 16), (2, 2), "VALID", (1, 1)),  # subsampled
    ((3, 20, 8), (5, 8, 16), (1,), "SAME", (1,)),
    ((2, 6, 7, 8, 8), (3, 3, 3, 8, 8), (1, 1, 1), "SAME", (1, 1, 1)),
]


@pytest.fixture(scope="module", autouse=True)
def _needs_onednn():
  reason = onednn_build.unavailable_reason()
  if reason is not None:
    pytest.skip(reason)


def _rand(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _round(a):
  return a.astype(jnp.bfloat16).astype(jnp.float32)


def _values_and_grads(conv, x, k, g):
  y, pullback = jax.vjp(conv, x, k)
  return (y, *pullback(g))


def _case(x_shape, k_shape, strides, padding, dilation, conv_fn):
  numbers = test_onednn._NUMBERS[len(x_shape) - 2]  # pylint: disable=protected-access
  return functools.partial(conv_fn, window_strides=strides, padding=padding,
                           rhs_dilation=dilation, dimension_numbers=numbers)


def _mixed_reference(conv, x, k, g):
  """y, dx, dk as the bfloat16 path defines them, from XLA's float32
  convolution at full precision."""
  exact = functools.partial(conv, precision=lax.Precision.HIGHEST)
  y, pullback = jax.vjp(exact, _round(x), _round(k))
  dx, dk = pullback(_round(g))
  return _round(y), _round(dx), dk


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation", _CASES)
def test_float32_convolution_multiplies_in_bfloat16_where_the_cpu_can(
    x_shape, k_shape, strides, padding, dilation):
  x, k = _rand(0, x_shape), _rand(1, k_shape) * 0.3
  ours = _case(x_shape, k_shape, strides, padding, dilation,
               onednn.conv_general_dilated)
  y32 = jax.jit(ours)(x, k)
  g = _rand(2, y32.shape)
  run = jax.jit(functools.partial(_values_and_grads, ours))
  plain = run(x, k, g)
  with jax.default_matmul_precision("bfloat16"):
    mixed = run(x, k, g)
    hlo = run.lower(x, k, g).as_text()
  chex.assert_type(mixed, jnp.float32)
  chex.assert_equal_shape([mixed[0], y32])
  if not onednn_bfloat16.bfloat16_native():
    # No bf16 instructions: float32, exactly as without the setting.
    chex.assert_trees_all_equal(mixed, plain)
    return
  assert "cnn_onednn_conv" in hlo and "bf16" in hlo
  reference = _mixed_reference(
      _case(x_shape, k_shape, strides, padding, dilation,
            lax.conv_general_dilated), x, k, g)
  for name, actual, expected in zip(("y", "dx", "dk"), mixed, reference):
    scale = float(jnp.abs(expected).max())
    if name == "dk":  # float32 sums of rounded operands, not rounded
      assert float(jnp.abs(actual - expected).max()) <= 2e-5 * scale, name
    else:
      bound = _BF16_ULP * jnp.abs(expected) + 1e-5 * scale
      assert bool(jnp.all(jnp.abs(actual - expected) <= bound)), name
  # And it is not float32: bfloat16's rounding shows.
  assert float(jnp.abs(mixed[0] - plain[0]).max()) > 1e-4 * float(
      jnp.abs(plain[0]).max())


@pytest.mark.parametrize("precision,wanted", [
    (None, False), ("bfloat16", True), ("default", True),
    ("float32", False), ("highest", False), ("tensorfloat32", False),
    (lax.Precision.DEFAULT, True), (lax.Precision.HIGHEST, False),
    ((lax.Precision.DEFAULT, lax.Precision.DEFAULT), True),
    ((lax.Precision.DEFAULT, lax.Precision.HIGHEST), False),
    ("BF16_BF16_F32", True), (lax.DotAlgorithmPreset.BF16_BF16_F32, True),
    (lax.DotAlgorithmPreset.F32_F32_F32, False)])
def test_bfloat16_requested_reads_precision_as_jax_does(precision, wanted):
  assert onednn_bfloat16.bfloat16_requested(precision) == wanted
  with jax.default_matmul_precision("bfloat16"):
    # An explicit precision wins over JAX's default; None takes it.
    assert onednn_bfloat16.bfloat16_requested(precision) == (
        True if precision is None else wanted)


def test_explicit_precision_on_the_call_is_honoured():
  x, k = _rand(3, (2, 9, 9, 8)), _rand(4, (3, 3, 8, 8))
  conv = functools.partial(onednn.conv_general_dilated, window_strides=(1, 1),
                           padding="SAME",
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fast = jax.jit(functools.partial(conv, precision="bfloat16"))(x, k)
  full = jax.jit(conv)(x, k)
  with jax.default_matmul_precision("bfloat16"):
    # HIGHEST on the call overrides JAX's default.
    highest = jax.jit(functools.partial(conv, precision="highest"))(x, k)
  chex.assert_trees_all_equal(highest, full)
  if onednn_bfloat16.bfloat16_native():
    assert float(jnp.abs(fast - full).max()) > 1e-4
  else:
    chex.assert_trees_all_equal(fast, full)


def test_a_rejected_bfloat16_pass_runs_in_float32(fresh_verdicts, monkeypatch):
  """A bf16 pass oneDNN cannot run here falls back to its float32 pass on
  oneDNN (not to XLA's slower bfloat16 convolution)."""
  del fresh_verdicts
  real = onednn_verify.run

  def no_bfloat16(target, geometry, a, b, result_shape, dtype=None):
    if dtype in ("bfloat16", onednn_verify.MIXED):
      raise RuntimeError("could not create a primitive descriptor")
    return real(target, geometry, a, b, result_shape, dtype)

  monkeypatch.setattr(onednn_verify, "run", no_bfloat16)
  monkeypatch.setattr(onednn_bfloat16, "bfloat16_native", lambda: True)
  x, k = _rand(5, (2, 9, 9, 8)), _rand(6, (3, 3, 8, 16))
  ours = _case(x.shape, k.shape, (1, 1), "SAME", (1, 1),
               onednn.conv_general_dilated)
  g = _rand(7, (2, 9, 9, 16))
  run = jax.jit(functools.partial(_values_and_grads, ours))
  plain = run(x, k, g)
  with jax.default_matmul_precision("bfloat16"):
    mixed = run(x, k, g)
    hlo = run.lower(x, k, g).as_text()
  chex.assert_trees_all_equal(mixed, plain)
  assert hlo.count("cnn_onednn_conv") >= 3 and "convolution(" not in hlo


def test_second_order_and_vmap_in_bfloat16():
  x, k = _rand(8, (3, 2, 8, 8, 8)), _rand(9, (3, 3, 8, 8)) * 0.3
  numbers = ("NHWC", "HWIO", "NHWC")

  def loss(conv, x, k):
    return jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME",
                                 dimension_numbers=numbers)) ** 2)

  def kernel_grad_norm(conv, x, k):  # reverse over reverse
    grad_k = jax.grad(functools.partial(loss, conv), 1)(x, k)
    return jnp.sum(grad_k ** 2)

  def per_member(conv):
    return jax.vmap(jax.grad(functools.partial(kernel_grad_norm, conv), 1),
                    in_axes=(0, None))(x, k)

  with jax.default_matmul_precision("bfloat16"):
    ours = jax.jit(lambda: per_member(onednn.conv_general_dilated))()
    one_by_one = [jax.jit(jax.grad(functools.partial(
        kernel_grad_norm, onednn.conv_general_dilated), 1))(x[i], k)
                  for i in range(3)]
  expected = per_member(functools.partial(lax.conv_general_dilated,
                                          precision=lax.Precision.HIGHEST))
  chex.assert_type(ours, jnp.float32)
  chex.assert_trees_all_close(ours, jnp.stack(one_by_one), rtol=1e-5,
                              atol=1e-5 * float(jnp.abs(ours).max()))
  error = float(jnp.abs(ours - expected).max() / jnp.abs(expected).max())
  assert error < 0.03, error


_WITHOUT_BF16 = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from cnn_jax.conv import onednn, onednn_bfloat16, onednn_build
x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 8)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 8, 8)), jnp.float32)
def f(x, k):
  return jax.grad(lambda x, k: jnp.sum(jnp.tanh(onednn.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))),
      (0, 1))(x, k)
plain = jax.jit(f)(x, k)
with jax.default_matmul_precision("bfloat16"):
  mixed = jax.jit(f)(x, k)
  hlo = jax.jit(f).lower(x, k).as_text()
print(json.dumps({"isa": onednn_build.cpu_isa(),
                  "native": onednn_bfloat16.bfloat16_native(),
                  "custom_calls": hlo.count("cnn_onednn_conv"),
                  "bf16": "bf16" in hlo,
                  "equal": all(bool((a == b).all())
                               for a, b in zip(plain, mixed))}))
"""


def test_without_bf16_instructions_float32_runs_unchanged():
  """What an AVX2 CPU does (forced with ONEDNN_MAX_CPU_ISA=AVX2): no bf16
  instructions, so 'bfloat16' keeps oneDNN's float32 passes, bitwise the
  results of float32 (never XLA's slower bfloat16 convolution)."""
  result = test_onednn._run_with_isa(_WITHOUT_BF16, "AVX2")  # pylint: disable=protected-access
  assert result["isa"] == "avx2" and not result["native"], result
  assert result["custom_calls"] >= 3 and not result["bf16"], result
  assert result["equal"], result


_DATA_PARALLEL = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from cnn_jax.conv import onednn
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
x = np.random.default_rng(0).normal(size=(8, 10, 10, 8)).astype(np.float32)
k = np.random.default_rng(1).normal(size=(3, 3, 8, 4)).astype(np.float32)
def grads(fn):
  return jax.grad(lambda x, k: jnp.sum(jnp.tanh(fn(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))),
      (0, 1))
step = jax.jit(grads(onednn.conv_general_dilated))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
ks = jax.device_put(k, NamedSharding(mesh, P()))
with jax.default_matmul_precision("bfloat16"):
  hlo = step.lower(xs, ks).compile().as_text()
  dx, dk = step(xs, ks)
  ex, ek = jax.jit(grads(onednn.conv_general_dilated))(x, k)
print(json.dumps({"all_gather": "all-gather" in hlo,
                  "dx_spec": list(dx.sharding.spec),
                  "dx_diff": float(np.abs(dx - ex).max()),
                  "dk_diff": float(np.abs(dk - ek).max() / np.abs(ek).max())}))
"""


def test_data_parallel_in_bfloat16_matches_one_device():
  stdout = run_on_cpu_devices(_DATA_PARALLEL, devices=4, timeout=300)
  result = json.loads(stdout.strip().splitlines()[-1])
  assert not result["all_gather"] and result["dx_spec"] == ["data"], result
  # Per example the same computation; the kernel gradient's float32 sum
  # is split over devices.
  assert result["dx_diff"] == 0.0 and result["dk_diff"] < 1e-5, result
