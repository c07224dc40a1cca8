"""oneDNN convolutions (cnn_jax/onednn.py) against lax.conv_general_dilated."""

import functools
import json
import platform

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import conv_impls
from cnn_jax import onednn
from cnn_jax import onednn_build
from cnn_jax.models import MODELS
from tests.conftest import run_on_cpu_devices

_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
            3: ("NDHWC", "DHWIO", "NDHWC")}

# setup.cfg installs oneDNN on Linux x86-64: there, a missing build is a
# failure (with the reason), not a skip.
_EXPECTED_HERE = (platform.system() == "Linux"
                  and platform.machine() == "x86_64")


@pytest.fixture(scope="module", autouse=True)
def _needs_onednn():
  reason = onednn_build.unavailable_reason()
  if reason is not None:
    if _EXPECTED_HERE and "CNN_JAX_ONEDNN=0" not in reason:
      pytest.fail(f"oneDNN convolutions unavailable: {reason}")
    pytest.skip(reason)


def _rand(seed, shape, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _conv(fn, x, k, strides, padding, dilation):
  n = x.ndim - 2
  return fn(x, k, strides, padding, rhs_dilation=dilation,
            dimension_numbers=_NUMBERS[n])


def _value_grads_and_second_order(fn, x, k, strides, padding, dilation):
  """y, the VJP of a random cotangent, and the gradient of the kernel
  gradient's squared norm (reverse over reverse)."""
  conv = functools.partial(_conv, fn, strides=strides, padding=padding,
                           dilation=dilation)
  y, vjp = jax.vjp(conv, x, k)
  g = _rand(7, y.shape, y.dtype)
  dx, dk = vjp(g)

  def kernel_grad_norm(x, k):
    dk = jax.grad(lambda k: jnp.sum(conv(x, k) * g))(k)
    return jnp.sum(dk.astype(jnp.float32)**2)

  hx, hk = jax.grad(kernel_grad_norm, argnums=(0, 1))(x, k)
  return y, dx, dk, hx, hk


# (x shape, kernel shape, strides, padding, kernel dilation)
_CASES = (
    ((2, 9, 3), (3, 3, 4), (1,), "SAME", (1,)),
    ((2, 11, 2), (4, 2, 3), (3,), "VALID", (2,)),
    ((2, 9, 10, 3), (3, 3, 3, 5), (1, 1), "SAME", (1, 1)),
    ((2, 9, 10, 3), (3, 3, 3, 5), (2, 2), "SAME", (1, 1)),
    ((2, 9, 10, 3), (3, 2, 3, 5), (2, 1), ((1, 2), (0, 3)), (1, 2)),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID", (1, 1)),
    ((2, 7, 7, 3), (7, 7, 3, 2), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((3, 28, 28, 1), (3, 3, 1, 8), (1, 1), "SAME", (1, 1)),
    ((1, 5, 6, 7, 2), (2, 3, 2, 2, 3), (1, 2, 1), "VALID", (2, 1, 1)),
    ((2, 4, 6, 6, 3), (3, 3, 3, 3, 4), (1, 2, 2), "SAME", (1, 1, 1)),
)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation", _CASES)
def test_values_gradients_and_second_order_match_lax(x_shape, k_shape, strides,
                                                     padding, dilation):
  x, k = _rand(1, x_shape), _rand(2, k_shape)
  reference = functools.partial(lax.conv_general_dilated,
                                precision=lax.Precision.HIGHEST)
  expected = _value_grads_and_second_order(reference, x, k, strides, padding,
                                           dilation)
  actual = jax.jit(functools.partial(
      _value_grads_and_second_order, onednn.conv_general_dilated,
      strides=strides, padding=padding, dilation=dilation))(x, k)
  for name, a, e in zip(("y", "dx", "dkernel", "d2x", "d2kernel"), actual,
                        expected):
    chex.assert_shape(a, e.shape)
    chex.assert_type(a, e.dtype)
    # Float32 summation order differs; second-order terms sum over whole
    # images twice, so their error scales with the largest entry.
    scale = float(jnp.abs(e).max())
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4 + 1e-5 * scale,
                               err_msg=name)


def test_runs_as_custom_calls_not_xla_convolutions():
  x, k = _rand(1, (2, 8, 8, 3)), _rand(2, (3, 3, 3, 4))
  fn = jax.grad(lambda x, k: jnp.sum(onednn.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=_NUMBERS[2])**2), (0, 1))
  hlo = jax.jit(fn).lower(x, k).as_text()
  for target in ("cnn_onednn_conv_fwd", "cnn_onednn_conv_bwd_data",
                 "cnn_onednn_conv_bwd_weights"):
    assert target in hlo
  assert "convolution" not in hlo.replace("cnn_onednn_conv", "")


def test_bfloat16_matches_float32_reference():
  x, k = _rand(3, (4, 12, 12, 16)), _rand(4, (3, 3, 16, 8)) * 0.1
  fn = functools.partial(_conv, strides=(1, 1), padding="SAME",
                         dilation=(1, 1))
  y, vjp = jax.vjp(functools.partial(fn, onednn.conv_general_dilated),
                   x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  g = _rand(5, y.shape)
  dx, dk = vjp(g.astype(jnp.bfloat16))
  chex.assert_type((y, dx, dk), jnp.bfloat16)
  y32, vjp32 = jax.vjp(functools.partial(fn, lax.conv_general_dilated), x, k)
  dx32, dk32 = vjp32(g)
  for a, e in ((y, y32), (dx, dx32), (dk, dk32)):
    scale = float(jnp.abs(e).max())
    np.testing.assert_allclose(a.astype(jnp.float32), e, atol=0.02 * scale)


def test_preferred_element_type_and_mixed_operand_dtypes():
  x, k = _rand(1, (2, 6, 6, 3)), _rand(2, (3, 3, 3, 4))
  y = onednn.conv_general_dilated(
      x.astype(jnp.bfloat16), k, (1, 1), "SAME",
      dimension_numbers=_NUMBERS[2], preferred_element_type=jnp.float32)
  chex.assert_type(y, jnp.float32)
  expected = lax.conv_general_dilated(
      x.astype(jnp.bfloat16).astype(jnp.float32), k, (1, 1), "SAME",
      dimension_numbers=_NUMBERS[2])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,lhs_dilation,padding,dtype,numbers", [
    (2, None, "SAME", np.float32, _NUMBERS[2]),
    (1, (2, 2), ((1, 1), (1, 1)), np.float32, _NUMBERS[2]),
    (1, None, ((-1, 1), (0, 0)), np.float32, _NUMBERS[2]),
    (1, None, "SAME", np.float16, _NUMBERS[2]),
    (1, None, "SAME", np.float32, ("NCHW", "OIHW", "NCHW")),
])
def test_unsupported_cases_fall_back_to_xla(groups, lhs_dilation, padding,
                                            dtype, numbers):
  nchw = numbers[0] == "NCHW"
  x = _rand(1, (2, 4, 6, 6) if nchw else (2, 6, 6, 4), dtype)
  k = _rand(2, (4, 4 // groups, 3, 3) if nchw else (3, 3, 4 // groups, 4),
            dtype)
  kwargs = dict(lhs_dilation=lhs_dilation, dimension_numbers=numbers,
                feature_group_count=groups)
  y = jax.jit(lambda x, k: onednn.conv_general_dilated(
      x, k, (1, 1), padding, **kwargs))
  assert "cnn_onednn" not in y.lower(x, k).as_text()
  np.testing.assert_allclose(
      y(x, k), lax.conv_general_dilated(x, k, (1, 1), padding, **kwargs),
      rtol=1e-3, atol=1e-3)


def test_supported_names_what_it_cannot_run():
  assert onednn.supported((2, 6, 6, 4), (3, 3, 4, 8), _NUMBERS[2]) is None
  assert "float16" in onednn.supported((2, 6, 6, 4), (3, 3, 4, 8),
                                       _NUMBERS[2], dtype=jnp.float16)
  assert "feature_group_count=2" in onednn.supported(
      (2, 6, 6, 4), (3, 3, 2, 8), _NUMBERS[2], feature_group_count=2)
  assert "empty operand" in onednn.supported((0, 6, 6, 4), (3, 3, 4, 8),
                                             _NUMBERS[2])
  empty = onednn.conv_general_dilated(jnp.zeros((0, 6, 6, 4)),
                                      jnp.ones((3, 3, 4, 8)), (1, 1), "SAME",
                                      dimension_numbers=_NUMBERS[2])
  chex.assert_shape(empty, (0, 6, 6, 8))


def test_vmap_runs_each_member():
  xs, ks = _rand(1, (3, 2, 7, 7, 2)), _rand(2, (3, 3, 3, 2, 4))
  conv = lambda fn: lambda x, k: fn(x, k, (1, 1), "SAME",
                                    dimension_numbers=_NUMBERS[2])
  loss = lambda fn: lambda x, k: jnp.sum(jnp.tanh(conv(fn)(x, k)))
  expected = jax.vmap(jax.grad(loss(lax.conv_general_dilated), (0, 1)))(xs,
                                                                         ks)
  actual = jax.jit(jax.vmap(jax.grad(loss(onednn.conv_general_dilated),
                                     (0, 1))))(xs, ks)
  chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_vmap_with_a_shared_kernel_and_per_example_gradients():
  """Members that share the kernel fold into one call's batch; per-example
  kernel gradients (vmap of grad) and nested vmaps stay per member."""
  xs, k = _rand(3, (2, 3, 6, 6, 2)), _rand(4, (3, 3, 2, 4))

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(
        x[None], k, (1, 1), "SAME", dimension_numbers=_NUMBERS[2])))

  def per_example(fn):  # [2, 3] examples -> gradients of each
    return jax.vmap(jax.vmap(jax.grad(loss(fn), (0, 1)), (0, None)),
                    (0, None))

  expected = per_example(lax.conv_general_dilated)(xs, k)
  actual = jax.jit(per_example(onednn.conv_general_dilated))(xs, k)
  chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-5)
  forward = jax.vmap(lambda x: onednn.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=_NUMBERS[2]))
  assert jax.jit(forward).lower(xs).as_text().count("cnn_onednn_conv_fwd") == 1


_DATA_PARALLEL = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P
from cnn_jax import onednn
from cnn_jax import onednn_build
assert len(jax.devices()) == 4
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 10, 10, 3)).astype(np.float32)
k = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
def grads(fn):
  return jax.grad(lambda x, k: jnp.sum(jnp.tanh(fn(
      x, k, (2, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))),
      (0, 1))
step = jax.jit(grads(onednn.conv_general_dilated))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
ks = jax.device_put(k, NamedSharding(mesh, P()))
hlo = step.lower(xs, ks).compile().as_text()
dx, dk = step(xs, ks)
ex, ek = grads(lax.conv_general_dilated)(x, k)
print(json.dumps({
    "all_gather": "all-gather" in hlo, "all_reduce": "all-reduce" in hlo,
    "local_forward": "f32[2,5,10,4]{3,2,1,0} custom-call" in hlo,
    "dx_spec": list(dx.sharding.spec), "dx_diff": float(np.abs(dx - ex).max()),
    "dk_diff": float(np.abs(dk - ek).max())}))
"""


def test_data_parallel_runs_each_devices_shard_of_the_batch():
  stdout = run_on_cpu_devices(_DATA_PARALLEL, devices=4, timeout=300)
  result = json.loads(stdout.strip().splitlines()[-1])
  # No gathering of the batch: each device convolves its 2 examples, and
  # the kernel gradient is summed across devices.
  assert not result["all_gather"], result
  assert result["all_reduce"] and result["local_forward"], result
  assert result["dx_spec"] == ["data"]
  assert result["dx_diff"] < 1e-5 and result["dk_diff"] < 1e-4, result


def test_auto_picks_onednn_on_the_cpu_only():
  x, k, nhwc = (8, 28, 28, 1), (3, 3, 1, 32), _NUMBERS[2]
  resolve = conv_impls.resolve_conv_impl
  assert resolve("auto", x, k, nhwc, backend="cpu") == "onednn"
  assert resolve("onednn", x, k, nhwc, backend="cpu") == "onednn"
  assert resolve("auto", x, k, nhwc, backend="gpu") == "xla"
  assert resolve("onednn", x, k, nhwc, backend="gpu") == "xla"
  # Layouts and dtypes oneDNN does not take keep the previous choices.
  assert resolve("onednn", x, k, backend="cpu") == "xla"  # NCHW numbers
  assert resolve("auto", x, k, nhwc, dtype=jnp.float16,
                 backend="cpu") in ("xla", "mixed")


def test_train_step_matches_xla_convolutions():
  """Same simple CNN, same data: a few SGD steps with either implementation
  end at the same parameters."""
  x = _rand(10, (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  finals = {}
  for impl in ("xla", "onednn"):
    model = MODELS["simple_cnn"](conv_impl=impl, features=(8, 16), hidden=32)
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, model=model, tx=tx):
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p}, x), labels).mean()
      grads = jax.grad(loss)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    for _ in range(3):
      params, opt_state = step(params, opt_state)
    finals[impl] = params
  chex.assert_trees_all_close(finals["onednn"], finals["xla"], rtol=1e-4,
                              atol=1e-5)


def test_unavailable_reasons_name_the_missing_piece(monkeypatch, tmp_path):
  monkeypatch.setenv("CNN_JAX_ONEDNN_ROOT", str(tmp_path))
  with pytest.raises(onednn_build.Unavailable, match=str(tmp_path)):
    onednn_build.onednn_root()
  monkeypatch.delenv("CNN_JAX_ONEDNN_ROOT")
  root = onednn_build.onednn_root()
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(onednn_build.Unavailable, match="no-such-compiler"):
    onednn_build._compile(root)  # pylint: disable=protected-access
  monkeypatch.setenv("CNN_JAX_ONEDNN", "0")
  load = onednn_build._load.__wrapped__  # pylint: disable=protected-access
  assert "CNN_JAX_ONEDNN=0" in load()


def test_compiled_library_is_cached_by_content(monkeypatch, tmp_path):
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path))
  root = onednn_build.onednn_root()
  first = onednn_build._compile(root)  # pylint: disable=protected-access
  assert first.parent.parent == tmp_path and first.is_file()
  mtime = first.stat().st_mtime_ns
  again = onednn_build._compile(root)  # pylint: disable=protected-access
  assert again == first
  assert first.stat().st_mtime_ns == mtime  # not rebuilt
  assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_command_line_status(capsys):
  assert onednn_build.main() == 0
  assert "oneDNN convolutions ready" in capsys.readouterr().out
