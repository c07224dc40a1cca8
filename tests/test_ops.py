"""Tests for cnn_jax.ops against scipy.signal and lax.reduce_window."""

import functools
import itertools
import math

from absl.testing import parameterized
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from cnn_jax import ops

# The lecture's worked example: a vertical-edge detector on a 4x5 image.
LECTURE_X = np.array([[0, 0, 0, 1, 1],
                      [0, 0, 0, 1, 1],
                      [0, 0, 0, 1, 1],
                      [0, 0, 1, 1, 1]])
LECTURE_K = np.array([[-1, 1],
                      [-1, 1]])
# Valid cross-correlation, checked by hand and with scipy.signal.correlate2d.
# Y[2, 2] = -X[2,2] + X[2,3] - X[3,2] + X[3,3] = -0 + 1 - 1 + 1 = 1.
LECTURE_Y = np.array([[0, 0, 2, 0],
                      [0, 0, 2, 0],
                      [0, 1, 1, 0]])

_HIGHEST = lax.Precision.HIGHEST


def _rand(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _dilate(k, dilations):
  """Inserts d - 1 zeros between the taps of k along each axis."""
  out = np.zeros([d * (m - 1) + 1 for m, d in zip(k.shape, dilations)],
                 k.dtype)
  out[tuple(slice(None, None, d) for d in dilations)] = k
  return out


def _scipy_cross_correlation(x, k):
  """Reference [B, *S, C_in] x [*W, C_in, C_out] valid cross-correlation."""
  batch, c_in, c_out = x.shape[0], x.shape[-1], k.shape[-1]
  return np.stack([
      np.stack([
          sum(signal.correlate(x[b, ..., c], k[..., c, o], mode="valid")
              for c in range(c_in))
          for o in range(c_out)], axis=-1)
      for b in range(batch)])


def _ref_pool(x, kind, window, stride, padding="VALID"):
  """lax.reduce_window pooling, the reference for the reshape fast path."""
  dims = (1, *window, 1)
  strides = (1, *stride, 1)
  if kind == "max":
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding)
  return lax.reduce_window(x, 0.0, lax.add, dims, strides,
                           padding) / math.prod(window)


class CorrelationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_lecture_example(self):
    # Integer inputs, compared exactly.
    y = self.variant(ops.correlate)(LECTURE_X, LECTURE_K)
    np.testing.assert_array_equal(y, LECTURE_Y)

  @chex.variants(with_jit=True, without_jit=True)
  def test_lecture_example_batched(self):
    # Batch of 2 (the image and its negative), 1 -> 2 output channels
    # (the edge detector and its negative).
    x = np.stack([LECTURE_X, -LECTURE_X])[..., None]
    k = np.stack([LECTURE_K, -LECTURE_K], axis=-1)[:, :, None, :]
    y = self.variant(ops.cross_correlation)(x, k)
    chex.assert_shape(y, (2, 3, 4, 2))
    np.testing.assert_array_equal(y[0, ..., 0], LECTURE_Y)
    np.testing.assert_array_equal(y[0, ..., 1], -LECTURE_Y)
    np.testing.assert_array_equal(y[1, ..., 0], -LECTURE_Y)
    np.testing.assert_array_equal(y[1, ..., 1], LECTURE_Y)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      ((9,), (3,), 1, "valid", 1),
      ((7, 8), (3, 2), (2, 1), "same", 1),
      ((6, 7, 5), (2, 3, 2), 1, "full", (1, 2, 1)),
  )
  def test_convolution_is_flipped_cross_correlation(self, spatial, window,
                                                    stride, padding, dilation):
    x = _rand(0, (2, *spatial, 3))
    k = _rand(1, (*window, 3, 4))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation,
                  precision=_HIGHEST)
    conv = self.variant(functools.partial(ops.convolution, **kwargs))
    xcorr = self.variant(functools.partial(ops.cross_correlation, **kwargs))
    flipped = k[(slice(None, None, -1),) * len(window)]
    chex.assert_trees_all_close(conv(x, k), xcorr(x, flipped), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      shapes=(((11,), (4,)), ((7, 8), (3, 2)), ((5, 6, 4), (2, 3, 2))),
      mode=("valid", "full"),
  )
  def test_signal_ops_match_scipy(self, shapes, mode):
    x_shape, k_shape = shapes
    x, k = _rand(2, x_shape), _rand(3, k_shape)
    convolve = self.variant(functools.partial(ops.convolve, padding=mode))
    correlate = self.variant(functools.partial(ops.correlate, padding=mode))
    np.testing.assert_allclose(convolve(x, k),
                               signal.convolve(x, k, mode=mode), atol=1e-5)
    np.testing.assert_allclose(correlate(x, k),
                               signal.correlate(x, k, mode=mode), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_padding_matches_scipy_for_odd_kernels(self):
    # For odd windows XLA's SAME and scipy's 'same' centre the kernel alike.
    x, k = _rand(4, (6, 7)), _rand(5, (3, 5))
    y = self.variant(functools.partial(ops.correlate, padding="same"))(x, k)
    np.testing.assert_allclose(y, signal.correlate(x, k, mode="same"),
                               atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      ((10,), (3,)),
      ((6, 7), (3, 2)),
      ((5, 4, 6), (2, 2, 3)),
  )
  def test_multichannel_is_sum_over_input_channels(self, spatial, window):
    x = _rand(6, (2, *spatial, 3))
    k = _rand(7, (*window, 3, 2))
    xcorr = functools.partial(ops.cross_correlation, precision=_HIGHEST)
    np.testing.assert_allclose(self.variant(xcorr)(x, k),
                               _scipy_cross_correlation(x, k), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      dict(stride=2, dilation=1, padding=0),
      dict(stride=(1, 3), dilation=1, padding=0),
      dict(stride=1, dilation=2, padding=0),
      dict(stride=(2, 1), dilation=(1, 2), padding=0),
      dict(stride=2, dilation=2, padding=1),
      dict(stride=1, dilation=1, padding=((2, 0), (1, 3))),
  )
  def test_stride_dilation_padding_match_scipy(self, stride, dilation, padding):
    x, k = _rand(8, (9, 10)), _rand(9, (3, 2))
    strides = (stride,) * 2 if isinstance(stride, int) else stride
    dilations = (dilation,) * 2 if isinstance(dilation, int) else dilation
    pads = ((padding,) * 2,) * 2 if isinstance(padding, int) else padding
    # Reference: dilate the kernel, pad, correlate densely, then subsample.
    dense = signal.correlate(np.pad(x, pads), _dilate(k, dilations),
                             mode="valid")
    expected = dense[::strides[0], ::strides[1]]
    fn = functools.partial(ops.correlate, stride=stride, dilation=dilation,
                           padding=padding)
    np.testing.assert_allclose(self.variant(fn)(x, k), expected, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_depthwise_feature_groups(self):
    # feature_group_count = C_in: each channel filtered by its own kernel.
    x, k = _rand(10, (1, 8, 3)), _rand(11, (3, 1, 3))
    fn = functools.partial(ops.cross_correlation, feature_group_count=3,
                           precision=_HIGHEST)
    y = self.variant(fn)(x, k)
    for c in range(3):
      np.testing.assert_allclose(
          y[0, :, c], signal.correlate(x[0, :, c], k[:, 0, c], mode="valid"),
          atol=1e-5)


def test_output_size_formula_grid():
  for n, m, p, s, d in itertools.product((5, 6, 8), (1, 2, 3), (0, 1, 2),
                                         (1, 2, 3), (1, 2)):
    m_eff = d * (m - 1) + 1
    expected = (n + 2 * p - m_eff) // s + 1
    if expected < 1:
      with pytest.raises(ValueError, match="larger than the padded input"):
        ops.output_size(n, m, p, s, d)
      continue
    assert ops.output_size(n, m, p, s, d) == expected, (n, m, p, s, d)
    # The op's shape agrees with the formula (traced only, nothing runs).
    out = jax.eval_shape(
        functools.partial(ops.cross_correlation, stride=s, padding=p,
                          dilation=d),
        jax.ShapeDtypeStruct((1, n, 1), jnp.float32),
        jax.ShapeDtypeStruct((m, 1, 1), jnp.float32))
    assert out.shape == (1, expected, 1), (n, m, p, s, d)


def test_output_size_named_paddings():
  for n, m, s, d in itertools.product((1, 4, 5, 7), (1, 2, 3), (1, 2, 3),
                                      (1, 2)):
    m_eff = d * (m - 1) + 1
    assert ops.output_size(n, m, "same", s, d) == -(-n // s)
    assert ops.output_size(n, m, "full", s, d) == (n + m_eff - 2) // s + 1
  assert ops.output_size(7, 3, (2, 0)) == 7
  assert ops.output_size(7, 3, "SAME", 2) == 4


def test_same_padding_shapes_3d():
  out = jax.eval_shape(
      functools.partial(ops.cross_correlation, stride=(1, 2, 3),
                        padding="same", dilation=(2, 1, 1)),
      jax.ShapeDtypeStruct((2, 5, 6, 7, 3), jnp.float32),
      jax.ShapeDtypeStruct((3, 4, 2, 3, 8), jnp.float32))
  assert out.shape == (2, 5, 3, 3, 8)


class PoolTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      kind=("max", "avg"),
      shape_window=(
          ((2, 8, 3), (2,)),
          ((2, 6, 8, 3), (2, 2)),
          ((1, 7, 9, 2), (2, 3)),  # Not divisible: trailing rows cropped.
          ((1, 4, 6, 5, 2), (2, 3, 2)),  # 3D, 5 not divisible by 2.
      ),
  )
  def test_fast_path_matches_reduce_window(self, kind, shape_window):
    shape, window = shape_window
    # Distinct values, so the max is unique and both gradients agree.
    x = jnp.asarray(np.random.default_rng(12).permutation(
        math.prod(shape)).reshape(shape).astype(np.float32))
    pool = ops.max_pool if kind == "max" else ops.avg_pool
    fast = functools.partial(pool, window=window)
    ref = functools.partial(_ref_pool, kind=kind, window=window, stride=window)
    # The fast path really is the reshape, not reduce_window.
    assert "reduce_window" not in str(jax.make_jaxpr(fast)(x))
    chex.assert_trees_all_close(self.variant(fast)(x), ref(x), atol=1e-6)
    # Weighted sum so the gradient depends on the output position.
    weights = _rand(13, ref(x).shape)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))
    chex.assert_trees_all_close(self.variant(grad(fast))(x), grad(ref)(x),
                                atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("max", "avg")
  def test_overlapping_windows_use_reduce_window(self, kind):
    x = jnp.asarray(_rand(14, (2, 7, 6, 3)))
    pool = ops.max_pool if kind == "max" else ops.avg_pool
    fn = functools.partial(pool, window=3, stride=2)
    assert "reduce_window" in str(jax.make_jaxpr(fn)(x))
    chex.assert_trees_all_close(
        self.variant(fn)(x), _ref_pool(x, kind, (3, 3), (2, 2)), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(((1, 4, 4, 1), (2, 2)),
                            ((2, 6, 6, 4, 3), (2, 3, 2)))
  def test_max_pool_ties_route_gradient_to_first_max(self, shape, window):
    # Tied maxima (few distinct values): each window's gradient goes to its
    # first maximal element in row-major order, as reduce_window's
    # select-and-scatter (and PyTorch) route it; a NaN window passes none.
    x = np.random.default_rng(3).integers(0, 3, shape).astype(np.float32)
    x[0, :window[0], :window[1]] = 0.0  # a window of all-equal elements
    fast = functools.partial(ops.max_pool, window=window)
    ref = functools.partial(_ref_pool, kind="max", window=window,
                            stride=window)
    weights = _rand(15, ref(x).shape)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))
    g = self.variant(grad(fast))(x)
    np.testing.assert_array_equal(g, grad(ref)(jnp.asarray(x)))
    assert g[(0,) * (len(shape) - 1)][0] == weights[(0,) * len(shape)]
    x[(0,) * len(shape)] = np.nan
    g_nan = self.variant(grad(fast))(x)
    np.testing.assert_array_equal(
        g_nan[(0,) + tuple(slice(0, w) for w in window) + (0,)], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_max_pool_hand_example(self):
    x = np.array([[1, 3, 2, 1],
                  [4, 2, 0, 1],
                  [5, 6, 7, 8],
                  [0, 1, 9, 2]], np.float32)[None, :, :, None]
    y = self.variant(lambda x: ops.max_pool(x, 2))(x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[4, 2], [6, 9]])
    y = self.variant(lambda x: ops.avg_pool(x, 2))(x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[2.5, 1], [3, 6.5]])

  @chex.variants(with_jit=True, without_jit=True)
  def test_avg_pool_same_excludes_padding(self):
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    pool = functools.partial(ops.avg_pool, window=3, stride=1, padding="same")
    y = self.variant(pool)(x)
    chex.assert_shape(y, (1, 4, 4, 1))
    # Top-left window covers x[0:2, 0:2] = [[0, 1], [4, 5]] plus 5 pads.
    self.assertAlmostEqual(float(y[0, 0, 0, 0]), (0 + 1 + 4 + 5) / 4)
    self.assertAlmostEqual(float(y[0, 1, 1, 0]), (0 + 1 + 2 + 4 + 5 + 6 + 8 + 9
                                                  + 10) / 9, places=5)
    y = self.variant(functools.partial(pool, count_include_pad=True))(x)
    self.assertAlmostEqual(float(y[0, 0, 0, 0]), (0 + 1 + 4 + 5) / 9,
                           places=6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_max_pool_same_padding(self):
    x = jnp.asarray(_rand(15, (2, 5, 7, 3)) - 10.0)  # Padding must not win.
    y = self.variant(
        functools.partial(ops.max_pool, window=2, padding="same"))(x)
    chex.assert_shape(y, (2, 3, 4, 3))
    chex.assert_trees_all_close(y, _ref_pool(x, "max", (2, 2), (2, 2), "SAME"))

  @chex.variants(with_jit=True, without_jit=True)
  def test_global_pools(self):
    x = _rand(16, (2, 3, 4, 5, 6))
    chex.assert_trees_all_close(self.variant(ops.global_avg_pool)(x),
                                x.mean(axis=(1, 2, 3)), atol=1e-6)
    chex.assert_trees_all_close(self.variant(ops.global_max_pool)(x),
                                x.max(axis=(1, 2, 3)))
    chex.assert_shape(ops.global_avg_pool(x[:, :, 0, 0]), (2, 6))

  def test_integer_pools(self):
    x = np.arange(8).reshape(1, 8, 1)
    np.testing.assert_array_equal(ops.max_pool(x, 3, 2)[0, :, 0], [2, 4, 6])
    np.testing.assert_allclose(ops.avg_pool(x, 2)[0, :, 0],
                               [0.5, 2.5, 4.5, 6.5])


@pytest.mark.parametrize("call, match", [
    (lambda: ops.correlate(np.ones((4, 4)), np.ones((2, 2)), padding="smae"),
     "padding='smae' is not one of"),
    (lambda: ops.output_size(5, 3, padding="half"), "padding='half'"),
    (lambda: ops.correlate(np.ones((4, 4)), np.ones(2)), "k must have the same"
     " rank"),
    (lambda: ops.cross_correlation(np.ones((1, 4, 4, 3)),
                                   np.ones((2, 3, 2))), "kernel rank 3"),
    (lambda: ops.cross_correlation(np.ones((1, 4, 4, 3)),
                                   np.ones((2, 2, 2, 5))), "C_in"),
    (lambda: ops.cross_correlation(np.ones((1, 4, 4, 1)),
                                   np.ones((5, 2, 1, 1))), "larger than"),
    (lambda: ops.cross_correlation(np.ones((1, 4, 4, 1)), np.ones((2, 2, 1, 1)),
                                   stride=(1, 2, 3)), "stride="),
    (lambda: ops.cross_correlation(np.ones((1, 4, 4, 1)), np.ones((2, 2, 1, 1)),
                                   padding=(1, 2, 3)), "padding="),
    (lambda: ops.max_pool(np.ones((1, 3, 3, 1)), 4), "max_pool window"),
    (lambda: ops.avg_pool(np.ones((1, 4, 4, 1)), (2, 2, 2)), "window="),
    (lambda: ops.max_pool(np.ones((4, 4)), 2), "x must be"),
    (lambda: ops.global_avg_pool(np.ones(4)), "x must be"),
])
def test_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
