"""The im2col convolution against lax.conv_general_dilated: values, gradients,
fallbacks, and layers.Conv's parameter compatibility across implementations."""

import functools
from unittest import mock

from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.conv import conv_im2col
from cnn_jax.conv import conv_impls
from cnn_jax.models import MODELS
from cnn_jax.models import layers

_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
            3: ("NDHWC", "DHWIO", "NDHWC")}


def _rand(seed, shape, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _value_and_grads(conv, x, k, seed=0, **kwargs):
  """conv(x, k), and the gradients of <conv(x, k), g> for a random g."""
  fn = functools.partial(conv, **kwargs)
  y, vjp = jax.vjp(fn, x, k)
  g = _rand(seed, y.shape, y.dtype)
  return (y, *vjp(g))


# (x shape, kernel shape, strides, padding, kernel dilation)
_CASES = (
    ((2, 9, 3), (3, 3, 4), (1,), "SAME", (1,)),
    ((2, 11, 2), (4, 2, 3), (3,), "VALID", (2,)),
    ((2, 9, 10, 3), (3, 3, 3, 5), (1, 1), "SAME", (1, 1)),
    ((2, 9, 10, 3), (3, 3, 3, 5), (2, 2), "SAME", (1, 1)),
    ((2, 9, 10, 3), (3, 2, 3, 5), (2, 1), ((1, 2), (0, 3)), (1, 2)),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID", (1, 1)),
    ((2, 8, 8, 4), (1, 1, 4, 6), (1, 1), "VALID", (1, 1)),
    ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((-1, 2), (2, -1)), (1, 1)),
    ((2, 7, 7, 3), (7, 7, 3, 2), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((1, 5, 6, 7, 2), (2, 3, 2, 2, 3), (1, 2, 1), "VALID", (2, 1, 1)),
)


def _assert_matches_lax(x, k, mode, **kwargs):
  kwargs.setdefault("precision", lax.Precision.HIGHEST)
  expected = _value_and_grads(lax.conv_general_dilated, x, k, **kwargs)
  actual = jax.jit(functools.partial(
      _value_and_grads, conv_im2col.conv_general_dilated, mode=mode,
      **kwargs))(x, k)
  for name, a, e in zip(("y", "dx", "dkernel"), actual, expected):
    chex.assert_shape(a, e.shape)
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4, err_msg=name)


class Im2colTest(chex.TestCase):

  @parameterized.parameters(*_CASES)
  def test_matches_lax_values_and_gradients(self, x_shape, k_shape, strides,
                                            padding, dilation):
    _assert_matches_lax(_rand(1, x_shape), _rand(2, k_shape), "im2col",
                        window_strides=strides, padding=padding,
                        rhs_dilation=dilation,
                        dimension_numbers=_NUMBERS[len(x_shape) - 2])

  @parameterized.parameters(_CASES[3], _CASES[4], _CASES[9])
  def test_mixed_mode_matches_lax(self, x_shape, k_shape, strides, padding,
                                  dilation):
    _assert_matches_lax(_rand(1, x_shape), _rand(2, k_shape), "mixed",
                        window_strides=strides, padding=padding,
                        rhs_dilation=dilation,
                        dimension_numbers=_NUMBERS[len(x_shape) - 2])

  @parameterized.product(mode=("im2col", "mixed"), cores=(1, 2))
  def test_batch_chunks_and_core_groups(self, mode, cores):
    # Chunks of one image, so every pass loops; with 2 cores the kernel
    # gradient runs as two independent loops over 3 chunks each.
    x, k = _rand(3, (6, 7, 8, 3)), _rand(4, (3, 3, 3, 8))
    with mock.patch.object(conv_im2col, "_CHUNK_BYTES", 1), \
        mock.patch.object(conv_im2col, "_cores", lambda: cores):
      assert conv_im2col._chunks(6, 100, carry_bytes=1) == 1
      # Patch rows wider than dy's (3 * 3 * 3 > 8), then narrower (6 < 40).
      _assert_matches_lax(x, k, mode, window_strides=(2, 1), padding="SAME",
                          dimension_numbers=_NUMBERS[2])
      _assert_matches_lax(x, _rand(5, (1, 2, 3, 40)), mode,
                          window_strides=(1, 1), padding="VALID",
                          dimension_numbers=_NUMBERS[2])

  @parameterized.parameters("im2col", "mixed")
  def test_vmap_over_members(self, mode):
    # As in a vmapped sweep: per-member kernels and inputs.
    xs, ks = _rand(6, (2, 4, 6, 6, 3)), _rand(7, (2, 3, 3, 3, 4))
    kwargs = dict(window_strides=(1, 1), padding="SAME",
                  dimension_numbers=_NUMBERS[2])
    expected = jax.vmap(functools.partial(
        _value_and_grads, lax.conv_general_dilated, **kwargs))(xs, ks)
    actual = jax.jit(jax.vmap(functools.partial(
        _value_and_grads, conv_im2col.conv_general_dilated, mode=mode,
        **kwargs)))(xs, ks)
    chex.assert_trees_all_close(actual, expected, atol=1e-4, rtol=1e-5)

  def test_chunks_limit_accumulator_traffic(self):
    # Small patches but a big kernel: few chunks, not one per image.
    assert conv_im2col._chunks(16, 300_000) == 2  # <= 1 MiB, divides 16
    assert conv_im2col._chunks(16, 300_000, carry_bytes=10_000_000) == 16
    assert conv_im2col._chunks(7, 10) == 7

  def test_unknown_mode_is_an_error(self):
    with pytest.raises(ValueError, match="mode='fast' is not one of"):
      conv_im2col.conv_general_dilated(
          jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), (1, 1), "SAME",
          dimension_numbers=_NUMBERS[2], mode="fast")

  def test_eager_matches_jit(self):
    x, k = _rand(11, (2, 9, 3)), _rand(12, (3, 3, 5))
    fn = functools.partial(_value_and_grads, conv_im2col.conv_general_dilated,
                           window_strides=(2,), padding="SAME",
                           dimension_numbers=_NUMBERS[1])
    chex.assert_trees_all_close(fn(x, k), jax.jit(fn)(x, k), atol=1e-5)

  def test_bfloat16_matches_float32_reference(self):
    x, k = _rand(3, (4, 12, 12, 8)), _rand(4, (3, 3, 8, 16))
    kwargs = dict(window_strides=(1, 1), padding="SAME",
                  dimension_numbers=_NUMBERS[2])
    expected = _value_and_grads(lax.conv_general_dilated, x, k, **kwargs)
    actual = jax.jit(functools.partial(
        _value_and_grads, conv_im2col.conv_general_dilated, **kwargs))(
            x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    for a, e in zip(actual, expected):
      assert a.dtype == jnp.bfloat16
      scale = float(jnp.abs(e).max())
      np.testing.assert_allclose(np.asarray(a, np.float32), e,
                                 atol=0.03 * scale)

  def test_flax_dimension_numbers_and_string_padding(self):
    # flax passes lax.ConvDimensionNumbers and keeps 'SAME' as a string.
    x, k = _rand(5, (2, 6, 6, 3)), _rand(6, (3, 3, 3, 4))
    numbers = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                       (0, 3, 1, 2))
    assert conv_im2col.supported(x.shape, k.shape, numbers) is None
    np.testing.assert_allclose(
        conv_im2col.conv_general_dilated(x, k, (1, 1), "SAME",
                                         dimension_numbers=numbers),
        lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                 dimension_numbers=numbers), atol=1e-4)

  @parameterized.parameters(
      dict(groups=3, lhs_dilation=None, numbers=("NHWC", "HWIO", "NHWC"),
           reason="feature_group_count"),
      dict(groups=1, lhs_dilation=(2, 2), numbers=("NHWC", "HWIO", "NHWC"),
           reason="input dilation"),
      dict(groups=1, lhs_dilation=None, numbers=("NCHW", "OIHW", "NCHW"),
           reason="layout"),
  )
  def test_unsupported_cases_fall_back_to_xla(self, groups, lhs_dilation,
                                              numbers, reason):
    x = _rand(7, (2, 6, 6, 6) if numbers[0] == "NHWC" else (2, 6, 6, 6))
    k_shape = (3, 3, 6 // groups, 6) if numbers[1] == "HWIO" else (6, 6, 3, 3)
    k = _rand(8, k_shape)
    why = conv_im2col.supported(x.shape, k.shape, numbers, lhs_dilation,
                                groups)
    assert why is not None and reason in why
    assert conv_impls.resolve_conv_impl("im2col", x.shape, k.shape, numbers,
                                 lhs_dilation, groups) == "xla"
    kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)),
                  lhs_dilation=lhs_dilation, dimension_numbers=numbers,
                  feature_group_count=groups)
    expected = _value_and_grads(lax.conv_general_dilated, x, k, **kwargs)
    actual = _value_and_grads(
        functools.partial(conv_impls.conv_general_dilated, impl="im2col"), x, k,
        **kwargs)
    for a, e in zip(actual, expected):
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_resolve_conv_impl_by_backend_and_name():
  x, k, nhwc = (8, 28, 28, 1), (3, 3, 1, 32), _NUMBERS[2]
  assert conv_impls.resolve_conv_impl("xla", x, k, nhwc) == "xla"
  assert conv_impls.resolve_conv_impl("im2col", x, k, nhwc) == "im2col"
  assert conv_impls.resolve_conv_impl("mixed", x, k, nhwc) == "mixed"
  # lax's default dimension numbers are NCHW: not im2col's layout.
  assert conv_impls.resolve_conv_impl("im2col", x, k) == "xla"
  assert conv_impls.resolve_conv_impl("auto", x, k, nhwc, backend="gpu") == "xla"
  assert conv_impls.resolve_conv_impl("auto", x, k, nhwc, backend="tpu") == "xla"
  assert conv_impls.resolve_conv_impl("auto", x, k, nhwc,
                               backend="cpu") in CPU_CHOICES
  with pytest.raises(ValueError, match="'im2coll' is not one of: auto, xla"):
    conv_impls.resolve_conv_impl("im2coll", x, k, nhwc)
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    layers.Conv(4, (3, 3), conv_impl="fast").init(
        jax.random.key(0), jnp.ones((1, 6, 6, 2)))


CPU_CHOICES = ("xla", "mixed", "onednn")


def test_default_conv_impl_is_settable():
  previous = conv_impls.default_conv_impl()
  try:
    conv_impls.set_default_conv_impl("xla")
    assert conv_impls.resolve_conv_impl(None, (1, 8, 8, 1), (3, 3, 1, 2),
                                 _NUMBERS[2]) == "xla"
    with pytest.raises(ValueError, match="is not one of"):
      conv_impls.set_default_conv_impl("cudnn")
  finally:
    conv_impls.set_default_conv_impl(previous)


@pytest.mark.parametrize("impl", ["xla", "onednn", "im2col", "mixed", "auto"])
def test_layers_conv_has_nn_conv_parameters_and_results(impl):
  x = _rand(9, (2, 10, 10, 3))
  reference = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME")
  variables = reference.init(jax.random.key(0), x)
  conv = layers.Conv(8, (3, 3), strides=(2, 2), padding="SAME",
                     conv_impl=impl)
  chex.assert_trees_all_equal_shapes(conv.init(jax.random.key(0), x),
                                     variables)
  np.testing.assert_allclose(conv.apply(variables, x),
                             reference.apply(variables, x), atol=1e-5)


def test_simple_cnn_train_gradients_agree_across_impls():
  x = _rand(10, (4, 28, 28, 1))
  labels = jnp.arange(4)
  grads = {}
  for impl in ("xla", "onednn", "im2col", "mixed"):
    model = MODELS["simple_cnn"](conv_impl=impl, features=(8, 16), hidden=32)
    params = model.init(jax.random.key(0), x)["params"]

    def loss(params, model=model):
      logits = model.apply({"params": params}, x)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grads[impl] = jax.jit(jax.grad(loss))(params)
  for impl in ("onednn", "im2col", "mixed"):
    chex.assert_trees_all_close(grads[impl], grads["xla"], atol=1e-5,
                                rtol=1e-4)
