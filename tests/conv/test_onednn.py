"""oneDNN convolutions (cnn_jax/conv/onednn.py) against lax.conv_general_dilated."""

import functools
import json
import os
import platform
import subprocess
import sys

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax.conv import __main__ as conv_main
from cnn_jax.conv import conv_im2col
from cnn_jax.conv import conv_impls
from cnn_jax.conv import onednn
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify
from cnn_jax.models import MODELS
from tests.conftest import REPO
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
    # Strided 1x1 with few channels (wrong kernel gradients in oneDNN 3.2's
    # AVX2 kernel), padded: runs subsampled, as a stride-1 convolution.
    ((3, 14, 13, 3), (1, 1, 3, 5), (2, 3), ((1, 0), (0, 2)), (1, 1)),
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


def _bfloat16_vjp_error():
  """(HLO of a bfloat16 convolution's VJP, each result's largest error
  relative to the float32 reference's largest magnitude)."""
  x, k = _rand(3, (4, 12, 12, 16)), _rand(4, (3, 3, 16, 8)) * 0.1
  fn = functools.partial(_conv, strides=(1, 1), padding="SAME",
                         dilation=(1, 1))

  def vjp(x, k, g):
    y, pullback = jax.vjp(functools.partial(fn, onednn.conv_general_dilated),
                          x, k)
    return (y, *pullback(g))

  args = (x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
          _rand(5, (4, 12, 12, 8)).astype(jnp.bfloat16))
  results = jax.jit(vjp)(*args)
  chex.assert_type(results, jnp.bfloat16)
  y32, vjp32 = jax.vjp(functools.partial(fn, lax.conv_general_dilated), x, k)
  expected = (y32, *vjp32(_rand(5, y32.shape)))
  errors = [float(jnp.abs(a.astype(jnp.float32) - e).max() / jnp.abs(e).max())
            for a, e in zip(results, expected)]
  return jax.jit(vjp).lower(*args).as_text(), errors


def test_bfloat16_matches_float32_reference():
  """On any CPU: oneDNN's bfloat16 primitives where it has them, XLA's
  convolutions where it has not; either way the values are right."""
  hlo, errors = _bfloat16_vjp_error()
  assert max(errors) < 0.02, errors
  uses_onednn = "cnn_onednn_conv" in hlo
  assert uses_onednn == (
      onednn_build.cpu_isa() in onednn_bfloat16.BFLOAT16_ISAS), (
      onednn_build.cpu_isa(), uses_onednn)


_BFLOAT16_ON_AVX2 = r"""
import json
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify
from tests.conv import test_onednn
hlo, errors = test_onednn._bfloat16_vjp_error()
print(json.dumps({"isa": onednn_build.cpu_isa(), "errors": errors,
                  "custom_calls": hlo.count("cnn_onednn_conv"),
                  "convolutions": hlo.count("convolution(")}))
"""


def test_bfloat16_falls_back_to_xla_without_bf16_instructions():
  """What a CPU without bf16 instructions does (forced on any CPU with
  ONEDNN_MAX_CPU_ISA=AVX2): oneDNN cannot create the primitives, the
  check says so, and XLA's convolutions run instead of a failing call."""
  result = _run_with_isa(_BFLOAT16_ON_AVX2, "AVX2")
  assert result["isa"] == "avx2", result
  assert result["custom_calls"] == 0 and result["convolutions"] >= 3, result
  assert max(result["errors"]) < 0.02, result


def _run_with_isa(code, isa, threads=2):
  env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, OMP_NUM_THREADS=str(threads),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


_RAW_STRIDED_1X1 = r"""
import json
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify
geometry = ((8, 8), (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1))
print(json.dumps({"isa": onednn_build.cpu_isa(), "verdicts": [
    onednn_verify.check(target, geometry, (4, 6), "float32")
    for target in onednn_verify.PASSES]}))
"""


@pytest.mark.parametrize("isa,threads,wrong", [("AVX2", 2, True),
                                               ("AVX2", 1, False),
                                               ("AVX", 2, False)])
def test_check_catches_the_avx2_strided_1x1_kernel_gradient(isa, threads,
                                                            wrong):
  """oneDNN 3.2's own fault, called directly (conv_general_dilated routes
  strided 1x1 convolutions around it): its AVX2 kernel gradient of a 1x1
  stride-2 convolution with 4 input channels is wrong on 2 threads, right
  on one thread or with AVX; forward and input gradient are right."""
  result = _run_with_isa(_RAW_STRIDED_1X1, isa, threads)
  assert result["isa"] == isa.lower(), result
  forward, input_grad, kernel_grad = result["verdicts"]
  assert forward is None and input_grad is None, result
  if wrong:
    assert "kernel gradient disagrees" in kernel_grad, result
  else:
    assert kernel_grad is None, result


def _grads_and_hlo(x_shape, k_shape):
  x, k = _rand(1, x_shape), _rand(2, k_shape)
  loss = lambda fn: lambda x, k: jnp.sum(jnp.tanh(fn(
      x, k, (1, 1), "SAME", dimension_numbers=_NUMBERS[2])))
  step = jax.jit(jax.grad(loss(onednn.conv_general_dilated), (0, 1)))
  expected = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, k)
  chex.assert_trees_all_close(step(x, k), expected, rtol=1e-5, atol=1e-5)
  return step.lower(x, k).as_text()


def test_a_primitive_that_cannot_be_created_runs_on_xla(
    fresh_verdicts, monkeypatch, caplog):
  def cannot(*args, **kwargs):
    raise RuntimeError("could not create a primitive descriptor")

  monkeypatch.setattr(onednn_verify, "run", cannot)
  with caplog.at_level("WARNING"):
    hlo = _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 7))
  assert "cnn_onednn_conv" not in hlo
  assert hlo.count("convolution(") >= 3
  warnings = [r.getMessage() for r in caplog.records
              if "XLA's convolution runs it instead" in r.getMessage()]
  # One line per pass (forward, input and kernel gradient), each naming it.
  assert len(warnings) == 3, warnings
  assert all("cannot create" in w and "c=3->7" in w for w in warnings)
  stored = json.loads(fresh_verdicts.read_text())
  assert len(stored) == 3 and all("could not create" in v
                                  for v in stored.values())


def test_a_pass_that_disagrees_runs_on_xla_and_the_others_stay(
    fresh_verdicts, monkeypatch):
  real = onednn_verify.run

  def wrong_kernel_gradient(target, *args):
    out = real(target, *args)
    return out * 1.5 if target == onednn_build.BACKWARD_WEIGHTS else out

  monkeypatch.setattr(onednn_verify, "run", wrong_kernel_gradient)
  hlo = _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 9))
  assert "cnn_onednn_conv_fwd" in hlo and "cnn_onednn_conv_bwd_data" in hlo
  assert "cnn_onednn_conv_bwd_weights" not in hlo
  verdicts = onednn_verify.verdicts()
  rejected = [k for k, v in verdicts.items() if v is not None]
  assert len(rejected) == 1 and rejected[0].startswith("kernel gradient")
  assert "disagrees" in verdicts[rejected[0]]


def test_verdicts_are_checked_once_per_machine(fresh_verdicts, monkeypatch):
  _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 11))
  stored = json.loads(fresh_verdicts.read_text())
  assert len(stored) == 3 and all(v is None for v in stored.values())

  def no_second_check(*args):
    raise AssertionError("checked again")

  # A new process (empty memory) reads the verdicts instead of checking.
  monkeypatch.setattr(onednn_verify, "_verdicts", {})
  monkeypatch.setattr(onednn_verify, "_loaded_from", None)
  monkeypatch.setattr(onednn_verify, "check", no_second_check)
  hlo = _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 11))
  assert "cnn_onednn_conv_bwd_weights" in hlo
  # A damaged file is checked again, not trusted.
  fresh_verdicts.write_text("{not json")
  monkeypatch.setattr(onednn_verify, "_loaded_from", None)
  with pytest.raises(AssertionError, match="checked again"):
    _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 11))


_CRASHING_CHECK = r"""
import os, pathlib, signal, sys
import jax, jax.numpy as jnp
from cnn_jax.conv import onednn, onednn_build, onednn_verify
onednn_verify.verdict_file = lambda: pathlib.Path(sys.argv[1])
real = onednn_verify.run
def crash_in_the_kernel_gradient(target, *args):
  if target == onednn_build.BACKWARD_WEIGHTS:
    os.kill(os.getpid(), signal.SIGSEGV)
  return real(target, *args)
onednn_verify.run = crash_in_the_kernel_gradient
x, k = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 13))
jax.grad(lambda x, k: jnp.sum(onednn.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    (0, 1))(x, k)
"""


def test_a_check_that_crashes_the_process_is_a_rejection_on_rerun(
    fresh_verdicts):
  """oneDNN can kill the process it runs in; the rerun must not crash again
  (nor trust the pass): the marker filed before the check names a dead
  process, so that pass runs on XLA and the others on oneDNN."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  crashed = subprocess.run(
      [sys.executable, "-c", _CRASHING_CHECK, str(fresh_verdicts)], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert crashed.returncode == -11, crashed.stderr[-3000:]
  stored = json.loads(fresh_verdicts.read_text())
  markers = [v for k, v in stored.items() if k.startswith("kernel gradient")]
  assert len(markers) == 1, stored
  assert markers[0].startswith("being checked by pid "), stored
  assert [v for k, v in stored.items() if k.startswith("forward")] == [None]

  hlo = _grads_and_hlo((2, 9, 9, 3), (3, 3, 3, 13))
  assert "cnn_onednn_conv_fwd" in hlo and "cnn_onednn_conv_bwd_data" in hlo
  assert "cnn_onednn_conv_bwd_weights" not in hlo
  verdict = next(v for k, v in onednn_verify.verdicts().items()
                 if k.startswith("kernel gradient"))
  assert verdict.startswith("its check crashed the process running it (pid")
  # Filed for the next process too, in place of the marker.
  assert json.loads(fresh_verdicts.read_text())[next(
      k for k in stored if k.startswith("kernel gradient"))] == verdict


def test_a_check_under_way_in_a_live_process_is_no_verdict(fresh_verdicts):
  """Another live process's marker (here this process's own) means "not
  known yet": this process checks the pass itself and uses it."""
  geometry = ((9, 9), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
  key = onednn_verify.class_key(onednn_build.FORWARD, geometry, (3, 5),
                                "float32")
  fresh_verdicts.write_text(json.dumps(
      {key: onednn_verify._checking_marker()}))  # pylint: disable=protected-access
  assert onednn_verify.rejection(onednn_build.FORWARD, geometry, (3, 5),
                                 "float32") is None
  assert json.loads(fresh_verdicts.read_text()) == {key: None}


def test_an_interrupted_check_leaves_no_verdict(fresh_verdicts, monkeypatch):
  """Ctrl-C during a check is not a crash of oneDNN: the marker goes, and
  the next process checks the pass again."""
  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(onednn_verify, "check", interrupted)
  geometry = ((9, 9), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
  with pytest.raises(KeyboardInterrupt):
    onednn_verify.rejection(onednn_build.FORWARD, geometry, (3, 5), "float32")
  assert json.loads(fresh_verdicts.read_text()) == {}


@pytest.mark.parametrize("target", list(onednn_verify.PASSES))
@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation",
                         _CASES[:6:2] + _CASES[8:9])
def test_reference_matches_lax(target, x_shape, k_shape, strides, padding,
                               dilation):
  """The NumPy reference the check trusts is itself right."""
  x, k = _rand(1, x_shape), _rand(2, k_shape)
  n = len(x_shape) - 2
  window, strides, pads, dilations = conv_im2col.channels_last_geometry(
      x_shape, k_shape, strides, padding, dilation)
  geometry = (tuple(x_shape[1:-1]), window, strides, pads, dilations)
  conv = lambda x, k: lax.conv_general_dilated(
      x, k, strides, pads, rhs_dilation=dilations,
      dimension_numbers=_NUMBERS[n], precision=lax.Precision.HIGHEST)
  y, vjp = jax.vjp(conv, x, k)
  g = _rand(3, y.shape)
  dx, dk = vjp(g)
  a, b, expected = {onednn_build.FORWARD: (x, k, y),
                    onednn_build.BACKWARD_DATA: (g, k, dx),
                    onednn_build.BACKWARD_WEIGHTS: (x, g, dk)}[target]
  actual = onednn_verify.reference(target, geometry, np.asarray(a),
                                   np.asarray(b))
  chex.assert_shape(actual, expected.shape)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_command_line_lists_isa_and_verdicts(fresh_verdicts, capsys):
  _grads_and_hlo((2, 5, 5, 2), (3, 3, 2, 3))
  assert conv_main.main() == 0
  out = capsys.readouterr().out
  assert f"oneDNN dispatches to {onednn_build.cpu_isa()}" in out
  assert out.count("in use  ") == 3 and "c=2->3" in out


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
from cnn_jax.conv import onednn
from cnn_jax.conv import onednn_build
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
  assert "CNN_JAX_ONEDNN=0" in load()[2]


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
  assert conv_main.main() == 0
  out = capsys.readouterr().out
  assert "oneDNN convolutions ready" in out
  # Which max-pooling runs here, native kernels or XLA's fusions.
  assert "max-pooling: " in out
  # Whether dense layers multiply on oneDNN in bfloat16 here.
  assert ("dense layers (bfloat16 matmul precision or dtype): oneDNN's"
          in out) == onednn_bfloat16.bfloat16_native(), out
