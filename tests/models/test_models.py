"""Model zoo: reference parameter counts, output shapes, batch norm, errors, CLI.

Shapes and counts come from `jax.eval_shape` (nothing computed); only a few
small models run for real.
"""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.conv import conv_impls
from cnn_jax.conv import conv_pool_native
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.models import MODELS
from cnn_jax.models import __main__ as models_cli
from cnn_jax.models import layers
from cnn_jax.models import summary
from cnn_jax.models import unet

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

# torchvision's counts at 1000 classes, 224x224x3 (trainable params only).
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}

# Input shape without the batch axis for the shape tests.
IMAGENET_NAMES = tuple(n for n in MODELS if n.startswith(
    ("alexnet", "vgg", "resnet", "densenet")) and n not in (
        "resnet18_cifar", "resnet1d"))
SMALL_INPUTS = {name: (64, 64, 3) for name in IMAGENET_NAMES}
SMALL_INPUTS.update({
    "simple_cnn": (28, 28, 1),
    "lenet5": (32, 32, 1),
    "resnet18_cifar": (32, 32, 3),
    "unet": (32, 32, 3),
    "cnn1d": (50, 3),
    "resnet1d": (50, 3),
    "r3d18": (8, 32, 32, 3),
    "c3d_small": (8, 32, 32, 3),
    "centernet": (64, 64, 3),
})
NUM_CLASSES = 7
BATCH = 2


def test_every_model_has_a_shape_test():
  assert set(SMALL_INPUTS) == set(MODELS)


@functools.lru_cache(maxsize=None)
def init_shapes(name, input_shape, num_classes=NUM_CLASSES):
  """ShapeDtypeStructs of MODELS[name]'s variables for [1, *input_shape] inputs."""
  model = MODELS[name](num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_param_count_matches_torchvision(name):
  variables = init_shapes(name, (224, 224, 3), num_classes=1000)
  assert summary.count_params(variables["params"]) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name, input_shape, num_classes, expected", [
    ("lenet5", (32, 32, 1), 10, 61_706),  # the textbook count
    # kuangliu/pytorch-cifar's ResNet18 (CIFAR stem).
    ("resnet18_cifar", (32, 32, 3), 10, 11_173_962),
    ("r3d18", (16, 112, 112, 3), 400, 33_371_472),  # torchvision r3d_18
])
def test_param_count_other_references(name, input_shape, num_classes,
                                      expected):
  variables = init_shapes(name, input_shape, num_classes)
  assert summary.count_params(variables["params"]) == expected


def test_unet_param_count_matches_formula():
  """milesial/Pytorch-UNet UNet(3, 2): bias-free convs + BN, ConvTranspose2d(k=2, s=2)."""
  def double_conv(c_in, c_out):  # two 3x3 convs, two BNs (scale + shift)
    return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
  widths = [64, 128, 256, 512, 1024]
  expected = double_conv(3, 64)
  expected += sum(double_conv(a, b) for a, b in zip(widths, widths[1:]))
  for wide, narrow in zip(widths[:0:-1], widths[-2::-1]):
    expected += 4 * wide * narrow + narrow  # transposed conv
    expected += double_conv(wide, narrow)  # on [skip, upsampled]
  expected += 64 * 2 + 2  # 1x1 head
  variables = init_shapes("unet", (32, 32, 3), num_classes=2)
  assert summary.count_params(variables["params"]) == expected == 31_037_698


@pytest.mark.parametrize("name", list(MODELS))
def test_params_are_float32(name):
  variables = init_shapes(name, SMALL_INPUTS[name])
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {
      jnp.dtype(jnp.float32)}


def expected_output_shape(name, input_shape):
  if name == "unet":
    return (BATCH, *input_shape[:-1], NUM_CLASSES)
  if name == "centernet":  # K heat maps + 4 box channels at stride 4
    return (BATCH, input_shape[0] // 4, input_shape[1] // 4, NUM_CLASSES + 4)
  return (BATCH, NUM_CLASSES)


# One member per family runs every (train, dtype) pair; the deeper members
# (the same code with more blocks, and the slowest to trace) run two pairs
# that still cover train=True/False and float32/bfloat16.
DEEPER_MEMBERS = ("vgg13", "vgg13_bn", "vgg16", "vgg19", "vgg19_bn",
                  "resnet34", "resnet101", "resnet152", "densenet169",
                  "densenet201")
SHAPE_CASES = [
    (name, train, dtype)
    for name in MODELS
    for train, dtype in (
        ((False, jnp.float32), (True, jnp.bfloat16)) if name in DEEPER_MEMBERS
        else ((False, jnp.float32), (False, jnp.bfloat16),
              (True, jnp.float32), (True, jnp.bfloat16)))
]


@pytest.mark.parametrize("name, train, dtype", SHAPE_CASES)
def test_output_shape(name, train, dtype):
  input_shape = SMALL_INPUTS[name]
  model = MODELS[name](num_classes=NUM_CLASSES, dtype=dtype)
  variables = init_shapes(name, input_shape)  # params are float32 either way
  x = jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32)
  out, new_state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=train, rngs=RNGS,
                               mutable=["batch_stats"]), variables, x)
  assert out.shape == expected_output_shape(name, input_shape)
  assert out.dtype == jnp.float32
  if "batch_stats" in variables:
    chex.assert_trees_all_equal_shapes_and_dtypes(
        new_state["batch_stats"], variables["batch_stats"])


def random_variables(shapes, seed=0):
  """Concrete variables for `init_shapes`-style shapes, drawn with numpy.

  A real `model.init` compiles every initializer and costs seconds per model
  on CPU; these tests only need finite, reasonably scaled numbers.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1])
    return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(
        leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


class RealForwardTest(chex.TestCase):
  """The smallest models computed for real, compiled and eager."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_lenet5_and_fcn1d(self):
    for name, input_shape in (("lenet5", (32, 32, 1)), ("cnn1d", (20, 3))):
      variables = random_variables(init_shapes(name, input_shape))
      x = jax.random.normal(jax.random.key(2), (BATCH, *input_shape))
      for dtype in (jnp.float32, jnp.bfloat16):
        model = MODELS[name](num_classes=NUM_CLASSES, dtype=dtype)
        out = self.variant(
            lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_shape(out, (BATCH, NUM_CLASSES))
        chex.assert_type(out, jnp.float32)
        chex.assert_tree_all_finite(out)

  @chex.variants(with_jit=True, without_jit=True)
  def test_unet_keeps_the_spatial_size(self):
    x = jax.random.normal(jax.random.key(3), (BATCH, 8, 12, 1))
    model = unet.UNet(num_classes=3, features=4, depth=2)
    variables = random_variables(
        jax.eval_shape(lambda x: model.init(RNGS, x), x))
    out, _ = self.variant(lambda v, x: model.apply(
        v, x, train=True, mutable=["batch_stats"]))(variables, x)
    chex.assert_shape(out, (BATCH, 8, 12, 3))
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("upsample", unet.UPSAMPLE_MODES)
def test_unet_upsampling_modes(upsample):
  model = unet.UNet(num_classes=3, features=4, depth=3, upsample=upsample)
  x = jax.ShapeDtypeStruct((BATCH, 16, 24, 1), jnp.float32)
  out = jax.eval_shape(lambda x: model.init_with_output(RNGS, x)[0], x)
  assert (out.shape, out.dtype) == ((BATCH, 16, 24, 3), jnp.float32)


def test_unet_rejects_an_unknown_upsampling():
  with pytest.raises(ValueError, match="upsample='nearest' is not one of"):
    unet.UNet(upsample="nearest").init(RNGS, jnp.zeros((1, 16, 16, 1)))


def test_batch_norm_updates_statistics_only_in_training():
  model = MODELS["resnet18_cifar"](num_classes=10)
  variables = random_variables(init_shapes("resnet18_cifar", (32, 32, 3), 10))
  x = jax.random.normal(jax.random.key(4), (BATCH, 32, 32, 3))

  @functools.partial(jax.jit, static_argnames="train")
  def forward(variables, x, train):
    return model.apply(variables, x, train=train, mutable=["batch_stats"])

  _, trained = forward(variables, x, train=True)
  _, evaluated = forward(variables, x, train=False)
  chex.assert_trees_all_equal(evaluated["batch_stats"],
                              variables["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         trained["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "resnet50",
                                  "densenet121", "unet", "resnet1d", "r3d18",
                                  "c3d_small", "lenet5", "simple_cnn"])
def test_every_convolution_goes_through_layers_conv(name, monkeypatch):
  """A faster `layers.Conv` must reach every conv of every model (but a
  first conv block that runs as one native kernel, conv_pool_native, which
  test_a_first_conv_block_runs_natively_with_the_same_function covers)."""
  called_from = set()
  monkeypatch.setattr(conv_pool_native, "usable", lambda *args: False)

  class RecordingConv(layers.Conv):

    def __call__(self, x):
      called_from.add(self.scope.path)
      return super().__call__(x)

  monkeypatch.setattr(layers, "Conv", RecordingConv)
  model = MODELS[name](num_classes=NUM_CLASSES)
  x = jax.ShapeDtypeStruct((1, *SMALL_INPUTS[name]), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(RNGS, x), x)["params"]
  conv_kernels = {
      tuple(k.key for k in path[:-1])
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == "kernel" and leaf.ndim > 2}
  assert conv_kernels and conv_kernels == called_from


def test_pooled_convolutions_keep_their_parameters():
  """The models whose conv -> ReLU -> pool runs as ConvReluMaxPool keep
  torchvision's parameter names and shapes (checkpoints, imported weights)
  and nn.Conv's initial values."""
  x = jnp.zeros((1, 64, 64, 3))
  params = MODELS["alexnet"](num_classes=NUM_CLASSES).init(RNGS, x)["params"]
  chex.assert_shape([params["features_0"]["kernel"], params["features_0"]["bias"],
                     params["features_3"]["kernel"]],
                    [(11, 11, 3, 64), (64,), (5, 5, 64, 192)])
  params = MODELS["vgg11"](num_classes=NUM_CLASSES).init(RNGS, x)["params"]
  # VGG11: conv 0, pool 2, conv 3, pool 5, convs 6 8, pool 10, ...
  assert {k for k in params if k.startswith("features")} == {
      f"features_{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)}
def test_transposed_conv_is_torch_conv_transpose_k2_s2():
  """y[b, 2i + a, 2j + c, o] = sum_k x[b, i, j, k] W[k, o, a, c] + bias[o]."""
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
  weight = np.random.default_rng(1).normal(size=(5, 6, 2, 2)).astype(np.float32)
  bias = np.arange(6, dtype=np.float32)
  expected = np.einsum("bijk,koac->biajco", x, weight).reshape(2, 6, 8, 6)
  expected += bias
  kernel = weight.transpose(0, 2, 3, 1).reshape(1, 1, 5, 24)
  out = unet.TransposedConv2x(6).apply(
      {"params": {"conv": {"kernel": kernel}, "bias": bias}}, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_adaptive_avg_pool_uses_torch_bins():
  x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 1, 2, 1))
  # torch bins for 5 -> 3: [0, 2), [1, 4), [3, 5).
  out = layers.adaptive_avg_pool(x, (3, 1))
  np.testing.assert_allclose(out[0, :, 0, 0], [0.5, 2.0, 3.5])
  # 1 -> 6 repeats the pixel (AlexNet at its smallest input).
  out = layers.adaptive_avg_pool(jnp.full((1, 1, 1, 2), 3.0), (6, 6))
  np.testing.assert_allclose(out, jnp.full((1, 6, 6, 2), 3.0))
  assert layers.adaptive_avg_pool(x, (5, 2)) is x


# (name, smallest accepted input, a too-small one, the model's name in errors)
SIZE_LIMITS = [
    ("alexnet", (63, 63, 3), (62, 62, 3), "AlexNet"),
    ("vgg11", (32, 32, 3), (31, 32, 3), "VGG11"),
    ("vgg16_bn", (32, 32, 3), (32, 16, 3), "VGG16-BN"),
    ("resnet50", (32, 32, 3), (8, 8, 3), "ResNet50"),
    ("resnet18_cifar", (8, 8, 3), (4, 4, 3), "ResNet18"),
    ("densenet121", (32, 32, 3), (16, 16, 3), "DenseNet121"),
    ("lenet5", (32, 32, 1), (28, 28, 1), "LeNet5"),
    ("unet", (16, 48, 3), (16, 40, 3), "UNet"),
    ("r3d18", (8, 16, 16, 3), (4, 16, 16, 3), "R3D18"),
    ("c3d_small", (8, 16, 16, 3), (8, 8, 8, 3), "C3DSmall"),
]


@pytest.mark.parametrize("name, smallest, too_small, model_name", SIZE_LIMITS)
def test_input_size_limits(name, smallest, too_small, model_name):
  init_shapes(name, smallest)  # traces without any error
  with pytest.raises(ValueError, match=f"^{re.escape(model_name)} expects"):
    init_shapes(name, too_small)


@pytest.mark.parametrize("name", list(MODELS))
def test_wrong_rank_names_the_model_and_the_layout(name):
  model = MODELS[name](num_classes=NUM_CLASSES)
  x = jnp.zeros(SMALL_INPUTS[name])  # no batch axis
  with pytest.raises(ValueError, match=r"expects .*\[B, .*C\]"):
    jax.eval_shape(lambda x: model.init(RNGS, x), x)


def test_error_messages_spell_out_the_expected_input():
  cases = [
      ("resnet50", (2, 8, 8, 3),
       "ResNet50 expects images [B, H, W, C] with H, W >= 32, got (2, 8, 8, 3)"),
      ("r3d18", (1, 16, 112, 3),
       "R3D18 expects videos [B, T, H, W, C] with T >= 8 and H, W >= 16, "
       "got (1, 16, 112, 3)"),
      ("unet", (1, 30, 32, 3),
       "UNet expects images [B, H, W, C] with H, W divisible by 16, "
       "got (1, 30, 32, 3)"),
      ("cnn1d", (4, 3),
       "FCN1D expects time series [B, T, C], got (4, 3)"),
  ]
  for name, shape, message in cases:
    with pytest.raises(ValueError) as error:
      MODELS[name]().init(RNGS, jnp.zeros(shape))
    # JAX may append a note on traceback filtering after the message.
    assert str(error.value).splitlines()[0] == message


def test_parameter_efficiency():
  assert summary.parameter_efficiency() == (100_000_100, 1_000)
  counts = summary.parameter_efficiency(32, 32, channels=3, units=10,
                                        kernel_size=5)
  assert counts.dense == 32 * 32 * 3 * 10 + 10
  assert counts.conv == 5 * 5 * 3 * 10 + 10
  assert "100,000,100" in summary.parameter_efficiency_text()


def test_count_params_counts_arrays_and_shapes():
  tree = {"a": jnp.zeros((2, 3)), "b": {"c": jax.ShapeDtypeStruct((4,),
                                                                   jnp.int8)}}
  assert summary.count_params(tree) == 10


def test_layer_table_rows_follow_the_call_order():
  rows, variables = summary.layer_table(MODELS["lenet5"](), (32, 32, 1))
  assert [r[0] for r in rows] == ["c1", "c3", "c5", "f6", "output"]
  assert rows[0][1:] == ((1, 28, 28, 6), 156)
  assert sum(r[2] for r in rows) == summary.count_params(variables["params"])


def test_cli_prints_resnet18_total(capsys):
  models_cli.main(["resnet18", "--depth", "1"])
  out = capsys.readouterr().out
  assert "Total params: 11,689,512" in out
  assert re.search(r"^layer4_1 +\[1, 7, 7, 512\] +4,720,640$", out, re.M)
  assert "100,000,100" in out


def test_cli_rejects_a_bad_input_shape(capsys):
  with pytest.raises(SystemExit):
    models_cli.main(["lenet5", "--input_shape", "28,28"])
  assert "LeNet5 expects images" in capsys.readouterr().err


# (kernel, conv strides, padding, pool window, pool stride, input shape)
_CONV_POOL_CASES = [
    ((3, 3), 1, "SAME", 2, None, (3, 10, 12, 5)),      # the MNIST CNN's
    ((3, 3), 1, ((1, 1), (1, 1)), 2, None, (2, 9, 7, 3)),  # VGG's, odd sizes
    ((5, 5), 2, ((2, 2), (2, 2)), 3, 2, (2, 17, 15, 3)),   # AlexNet's kind
]


class _ConvReluPool(layers.nn.Module):
  """One conv -> ReLU -> max-pool named 'conv': ConvReluMaxPool (pool_first)
  or the reference, conv -> bias -> ReLU -> max-pool in that order."""
  case: tuple
  pool_first: bool
  dtype: object = jnp.float32
  conv_impl: object = None

  @layers.nn.compact
  def __call__(self, x):
    kernel, strides, padding, window, pool_stride, _ = self.case
    if self.pool_first:
      return layers.ConvReluMaxPool(8, kernel, window, pool_stride, strides,
                                    padding, dtype=self.dtype,
                                    conv_impl=self.conv_impl, name="conv")(x)
    x = layers.Conv(8, kernel, strides, padding=padding, dtype=self.dtype,
                    conv_impl=self.conv_impl, name="conv")(x)
    return ops.max_pool(layers.nn.relu(x), window, pool_stride)


@pytest.mark.parametrize("case", _CONV_POOL_CASES[:2])
def test_a_convolution_multiplied_in_bfloat16_is_pooled_in_bfloat16(case):
  """float32 model, bfloat16 matmuls (config.train.matmul_precision): where
  oneDNN multiplies the convolution in bfloat16 it hands the pool its
  bfloat16 result, and the block's output is the textbook order's rounded
  to bfloat16, bit for bit, in bfloat16 (what the next bfloat16 product
  reads); its gradients are the textbook order's followed by that
  rounding, to float32 rounding."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=case[-1]),
                  jnp.float32)
  bf16_convs = onednn_bfloat16.bfloat16_native()
  with jax.default_matmul_precision("bfloat16"):
    kernel = jnp.ones((*case[0], x.shape[-1], 8))
    y = conv_impls.conv_fn("auto", keep_bfloat16=True)(
        x, kernel, (case[1],) * 2, case[2],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert y.dtype == (jnp.bfloat16 if bf16_convs else jnp.float32)
    reference = _ConvReluPool(case, False, jnp.float32, "auto")
    pool_first = _ConvReluPool(case, True, jnp.float32, "auto")
    params = reference.init(jax.random.key(3), x)["params"]
    params = {"conv": {**params["conv"], "bias": jnp.linspace(-3.0, 1.0, 8)}}
    out_dtype = jnp.bfloat16 if bf16_convs else jnp.float32
    out = jax.jit(pool_first.apply)({"params": params}, x)
    expected = jax.jit(reference.apply)({"params": params}, x)
    assert out.dtype == out_dtype
    np.testing.assert_array_equal(out, expected.astype(out_dtype))

    def loss(model, params):
      y = model.apply({"params": params}, x).astype(out_dtype)
      y = y.astype(jnp.float32)
      return jnp.sum(y * jnp.cos(y))

    got = jax.jit(jax.grad(functools.partial(loss, pool_first)))(params)
    want = jax.jit(jax.grad(functools.partial(loss, reference)))(params)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", _CONV_POOL_CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("conv_impl", ["xla", "auto"])
def test_conv_relu_max_pool_is_the_textbook_order(case, dtype, conv_impl):
  """Pooling before the bias and the ReLU: the same parameters from the
  same key, the same output bit for bit, the same gradients."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=case[-1]),
                  jnp.float32)
  reference = _ConvReluPool(case, False, dtype, conv_impl)
  pool_first = _ConvReluPool(case, True, dtype, conv_impl)
  params = reference.init(jax.random.key(3), x)["params"]
  chex.assert_trees_all_equal(pool_first.init(jax.random.key(3), x)["params"],
                              params)
  # Biases that make the ReLU cut a good share of the maxima.
  params = {"conv": {**params["conv"], "bias": jnp.linspace(-3.0, 1.0, 8)}}
  out = pool_first.apply({"params": params}, x)
  expected = reference.apply({"params": params}, x)
  chex.assert_equal_shape([out, expected])
  assert out.dtype == dtype
  assert 0.2 < float(jnp.mean(expected == 0)) < 0.8, "too few or too many cut"
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(expected, np.float32))

  def loss(model, params):
    y = model.apply({"params": params}, x).astype(jnp.float32)
    return jnp.sum(y * jnp.cos(y))

  got = jax.grad(functools.partial(loss, pool_first))(params)
  want = jax.grad(functools.partial(loss, reference))(params)
  if dtype == jnp.float32:
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
  else:  # bfloat16 sums over different element counts: relative to the leaf
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert float(jnp.max(jnp.abs(g - w))) <= 0.02 * float(jnp.max(jnp.abs(w)))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_first_conv_block_runs_natively_with_the_same_function(precision):
  """The MNIST CNN's conv1 block (1 -> 32 channels, 3x3, pool 2) as one
  native kernel on AVX-512 CPUs (conv_pool_native): the parameters of the
  textbook order from the same key, its output (rounded to bfloat16 under
  bfloat16 matmul precision, as the next product reads it) and its
  gradients."""
  if not conv_pool_native.usable((2, 12, 10, 1), (3, 3, 1, 32), 1, "SAME", 2,
                                 None, jnp.float32):
    pytest.skip("no native conv-pool kernels here (AVX-512 CPUs)")
  case = ((3, 3), 1, "SAME", 2, None, (4, 12, 10, 1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=case[-1]),
                  jnp.float32)

  class Block(layers.nn.Module):
    pool_first: bool

    @layers.nn.compact
    def __call__(self, x):
      if self.pool_first:
        return layers.ConvReluMaxPool(32, (3, 3), 2, name="conv")(x)
      x = layers.Conv(32, (3, 3), padding="SAME", conv_impl="xla",
                      precision="highest", name="conv")(x)
      return ops.max_pool(layers.nn.relu(x), 2)

  params = Block(False).init(jax.random.key(3), x)["params"]
  chex.assert_trees_all_equal(Block(True).init(jax.random.key(3), x)["params"],
                              params)
  params = {"conv": {**params["conv"], "bias": jnp.linspace(-0.5, 0.2, 32)}}
  native, reference = Block(True), Block(False)
  out_dtype = (jnp.bfloat16 if precision == "bfloat16"
               and onednn_bfloat16.bfloat16_native() else jnp.float32)
  with jax.default_matmul_precision(precision):
    hlo = jax.jit(native.apply).lower({"params": params}, x).as_text()
    assert onednn_build.CONV_MAX_POOL_FORWARD in hlo
    out = jax.jit(native.apply)({"params": params}, x)
    expected = jax.jit(reference.apply)({"params": params}, x)
    assert out.dtype == out_dtype
    np.testing.assert_allclose(np.asarray(out, np.float32),
                               np.asarray(expected.astype(out_dtype),
                                          np.float32), rtol=1e-2, atol=1e-5)
    exact = np.mean(np.asarray(out, np.float32) == np.asarray(
        expected.astype(out_dtype), np.float32))
    assert exact > 0.99, exact  # float32 sums in another order: rarely 1 ulp

    def loss(model, params):
      y = model.apply({"params": params}, x).astype(out_dtype)
      y = y.astype(jnp.float32)
      return jnp.sum(y * jnp.cos(y))

    got = jax.jit(jax.grad(functools.partial(loss, native)))(params)
    want = jax.jit(jax.grad(functools.partial(loss, reference)))(params)
  tolerance = 1e-5 if out_dtype == jnp.float32 else 2e-2
  chex.assert_trees_all_close(got, want, rtol=tolerance, atol=tolerance)
