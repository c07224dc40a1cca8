"""Winograd's F(4x4, 3x3) convolution (cnn_jax/conv/winograd.py, native
transforms in native/winograd.cc) against lax's direct convolution: values
and gradients to float32 rounding, second order, vmap, data parallelism,
and which layers conv_impls' 'auto' gives it."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.conv import conv_impls
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import winograd
from tests.conftest import data_parallel_report
from tests.conftest import require_avx512_kernels
from tests.conftest import run_python

_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(scope="module", autouse=True)
def _needs_the_library():
  require_avx512_kernels()


def _direct(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=_NHWC,
                                  precision=lax.Precision.HIGHEST)


def _operands(shape, features, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], features))
                       / np.sqrt(9 * shape[-1]), jnp.float32)
  return x, kernel


def _close(got, want, rtol=2e-5):
  """Equal up to `rtol` of the largest magnitude (Winograd's transforms
  round differently from the direct sums, most where values cancel)."""
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("shape, features", [
    ((2, 8, 8, 16), 32),     # whole tiles
    ((3, 7, 9, 32), 16),     # partial tiles on both sides
    ((2, 4, 4, 16), 16),     # one tile per image
    ((1, 5, 3, 16), 16),     # a map narrower than a tile
    ((2, 16, 16, 128), 128),  # a ResNet-18 stage-2 layer's channels
])
def test_values_and_gradients_match_the_direct_convolution(shape, features):
  x, kernel = _operands(shape, features)
  ct = jnp.asarray(np.random.default_rng(1).normal(
      size=(*shape[:3], features)), jnp.float32)

  def value_and_grads(conv):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(ct))

  got = jax.jit(lambda: value_and_grads(winograd.conv))()
  want = value_and_grads(_direct)
  assert got[0].shape == want[0].shape == (*shape[:3], features)
  for g, w in zip(got, want):
    _close(g, w)


def test_second_order_derivatives():
  x, kernel = _operands((2, 8, 8, 16), 16)

  def input_gradient_norm(conv):
    return lambda k: jnp.sum(jax.grad(
        lambda x: jnp.sum(jnp.sin(conv(x, k))))(x) ** 2)

  got = jax.jit(jax.grad(input_gradient_norm(winograd.conv)))(kernel)
  _close(got, jax.grad(input_gradient_norm(_direct))(kernel))


@pytest.mark.parametrize("shared_kernel", [True, False])
def test_vmap_folds_the_members_into_the_batch(shared_kernel):
  rng = np.random.default_rng(2)
  xs = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 16)), jnp.float32)
  kernels = jnp.asarray(rng.normal(size=(3, 3, 3, 16, 16)) * 0.1,
                        jnp.float32)
  axes = (0, None) if shared_kernel else (0, 0)
  k = kernels[0] if shared_kernel else kernels

  def loss(conv):
    return lambda xs, k: jnp.sum(jnp.tanh(jax.vmap(conv, axes)(xs, k)))

  got = jax.jit(jax.value_and_grad(loss(winograd.conv), (0, 1)))(xs, k)
  want = jax.value_and_grad(loss(_direct), (0, 1))(xs, k)
  _close(got[0], want[0])
  for g, w in zip(got[1], want[1]):
    _close(g, w)


def test_auto_takes_wide_stride_1_float32_layers_only():
  def runs_winograd(x_shape, kernel_shape, strides=(1, 1), padding="SAME",
                    impl="auto", dtype=jnp.float32, precision=None):
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    kernel = jax.ShapeDtypeStruct(kernel_shape, dtype)
    hlo = jax.jit(lambda x, k: conv_impls.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=_NHWC, impl=impl,
        precision=precision)).lower(x, kernel).as_text()
    return onednn_build.WINOGRAD_INPUT_TILES in hlo

  batch = 4  # 4 x 16 tiles: MIN_ROWS
  assert winograd.MIN_ROWS == 64 and winograd.MIN_SIZE == 4
  layer = ((batch, 16, 16, 128), (3, 3, 128, 128))
  assert runs_winograd(*layer)
  assert runs_winograd(*layer, impl="winograd")
  assert runs_winograd(*layer, padding=((1, 1), (1, 1)))
  assert not runs_winograd(*layer, impl="onednn")
  assert not runs_winograd(*layer, strides=(2, 2))
  assert not runs_winograd(*layer, padding="VALID")
  assert not runs_winograd(*layer, dtype=jnp.bfloat16)
  # bf16 products allowed: oneDNN's bf16 kernels where the CPU has bf16 dot
  # products, else (oneDNN in float32) Winograd as under float32.
  assert runs_winograd(*layer, precision="bfloat16") == (
      not onednn_bfloat16.bfloat16_native())
  assert runs_winograd((8 * batch, 16, 16, 512), (3, 3, 512, 512),
                       precision="bfloat16") == (
                           not onednn_bfloat16.bfloat16_native())
  assert not runs_winograd((batch, 16, 16, 128), (5, 5, 128, 128))
  assert not runs_winograd((batch // 2, 16, 16, 128), (3, 3, 128, 128))
  assert runs_winograd((4 * batch, 8, 8, 128), (3, 3, 128, 128))
  assert runs_winograd((16 * batch, 4, 4, 128), (3, 3, 128, 128))
  assert not runs_winograd((64 * batch, 2, 2, 128), (3, 3, 128, 128))
  assert runs_winograd((batch, 16, 16, 64), (3, 3, 64, 128))
  assert not runs_winograd((batch, 16, 16, 32), (3, 3, 32, 128))
  assert not runs_winograd((batch, 16, 16, 136), (3, 3, 136, 128))


def test_auto_convolution_equals_lax():
  x, kernel = _operands((128, 8, 8, 64), 64, seed=3)
  got = jax.jit(lambda x, k: conv_impls.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC,
      impl="auto"))(x, kernel)
  _close(got, _direct(x, kernel))


_DATA_PARALLEL = r"""
from cnn_jax.conv import winograd
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 8, 8, 16)).astype(np.float32)
kernel = (rng.normal(size=(3, 3, 16, 16)) * 0.1).astype(np.float32)
def grads(kernel, x):
  return jax.value_and_grad(
      lambda k, x: jnp.sum(jnp.tanh(winograd.conv(x, k))), argnums=(0, 1))(
          kernel, x)
step = jax.jit(grads)
args = (jax.device_put(kernel, replicated), jax.device_put(x, by_batch))
hlo = step.lower(*args).compile().as_text()
value, (dk, dx) = step(*args)
ref_value, (ref_dk, ref_dx) = jax.jit(grads)(kernel, x)
report = {
    "all_gather": "all-gather" in hlo,
    "local_tiles": "f32[36,2,4,16]{3,2,1,0} custom-call" in hlo,
    # relative to the largest entry: summation order differs across devices
    "dk_diff": float(np.abs(np.asarray(dk) - np.asarray(ref_dk)).max()
                     / np.abs(np.asarray(ref_dk)).max()),
    "dx_diff": float(np.abs(np.asarray(dx) - np.asarray(ref_dx)).max()),
    "value_diff": float(abs(value - ref_value))}
"""


def test_data_parallel_transforms_each_devices_shard():
  result = data_parallel_report(_DATA_PARALLEL)
  assert not result["all_gather"], result
  assert result["local_tiles"], result
  assert result["dk_diff"] < 1e-5 and result["dx_diff"] < 1e-5, result
  assert result["value_diff"] < 1e-3, result


def test_a_cpu_without_bf16_products_keeps_float32_thresholds():
  """With oneDNN capped below bf16 dot products (AVX512_CORE: a Skylake or
  Cascade Lake server), bfloat16 precision runs oneDNN in float32, so a
  64-channel layer takes Winograd as under float32."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax.conv import conv_impls, onednn_build\n"
          "x, k = jnp.ones((32, 16, 16, 64)), jnp.ones((3, 3, 64, 64))\n"
          "with jax.default_matmul_precision('bfloat16'):\n"
          "  hlo = jax.jit(lambda x, k: conv_impls.conv_general_dilated(\n"
          "      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO',\n"
          "      'NHWC'))).lower(x, k).as_text()\n"
          "print(onednn_build.cpu_isa(),"
          " onednn_build.WINOGRAD_INPUT_TILES in hlo)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX512_CORE")
  assert stdout.split() == ["avx512_core", "True"], stdout


def test_an_avx2_cpu_keeps_onednn():
  """Below AVX-512 'auto' runs the layer on oneDNN (here oneDNN capped at
  AVX2, as on an AVX2-only CPU)."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cnn_jax.conv import conv_impls, onednn_build\n"
          "x, k = jnp.ones((32, 16, 16, 128)), jnp.ones((3, 3, 128, 128))\n"
          "hlo = jax.jit(lambda x, k: conv_impls.conv_general_dilated(\n"
          "    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO',\n"
          "    'NHWC'))).lower(x, k).as_text()\n"
          "print(onednn_build.cpu_isa(),"
          " onednn_build.WINOGRAD_INPUT_TILES in hlo,"
          " onednn_build.FORWARD in hlo)\n")
  stdout = run_python(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
  assert stdout.split() == ["avx2", "False", "True"], stdout
