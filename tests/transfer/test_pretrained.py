"""cnn_jax.pretrained: weight files and torch -> Linen conversion.

The parity tests (logits of a torch model vs the converted Linen model, eval
mode, atol 1e-4) need torch and are skipped without it; they use torch.nn
copies of the torchvision architectures (tests/torchvision_reference.py),
because the torchvision wheels that match the CPU torch are CUDA builds that
do not import. Each takes, on the 2-core CPU shared with other jobs: ResNet-18
10 s and AlexNet 7 s (default suite); ResNet-50 23 s, VGG-16 18 s and
DenseNet-121 38 s (marked slow: python -m pytest -m slow).
"""

import functools
import os

import jax
import numpy as np
import pytest

from cnn_jax.models import MODELS
from cnn_jax.transfer import plan as transfer_plan
from cnn_jax.transfer import pretrained
from cnn_jax.transfer import restore


def _synthetic_resnet_state_dict(rng):
  """A few torch-named tensors of every kind the converter maps."""
  return {
      "conv1.weight": rng.standard_normal((4, 3, 7, 5)).astype(np.float32),
      "bn1.weight": rng.standard_normal(4).astype(np.float32),
      "bn1.bias": rng.standard_normal(4).astype(np.float32),
      "bn1.running_mean": rng.standard_normal(4).astype(np.float32),
      "bn1.running_var": rng.random(4).astype(np.float32),
      "bn1.num_batches_tracked": np.array(7, np.int64),
      "layer1.0.downsample.0.weight":
          rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
      "fc.weight": rng.standard_normal((10, 8)).astype(np.float32),
      "fc.bias": rng.standard_normal(10).astype(np.float32),
  }


def test_convert_maps_names_and_layouts():
  sd = _synthetic_resnet_state_dict(np.random.default_rng(0))
  variables = pretrained.convert(sd)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  assert params["conv1"]["kernel"].shape == (7, 5, 3, 4)  # [H, W, I, O]
  np.testing.assert_array_equal(params["bn1"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], sd["bn1.running_mean"])
  np.testing.assert_array_equal(stats["bn1"]["var"], sd["bn1.running_var"])
  assert params["layer1_0"]["downsample_0"]["kernel"].shape == (1, 1, 4, 8)
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  assert "num_batches_tracked" not in str(variables)


def test_module_paths_follow_our_names():
  assert pretrained.module_path("layer3.1.downsample.1") == (
      "layer3_1/downsample_1")
  assert pretrained.module_path("features.28") == "features_28"
  assert pretrained.module_path("features.denseblock2.denselayer7.norm2") == (
      "denseblock2/denselayer7/norm2")
  assert pretrained.module_path("features.transition1.conv") == (
      "transition1/conv")


def test_old_densenet_keys_timm_vgg_and_dataparallel_prefix():
  rng = np.random.default_rng(1)
  w = rng.standard_normal(6).astype(np.float32)
  variables = pretrained.convert({
      "module.features.denseblock1.denselayer1.norm.1.weight": w})
  np.testing.assert_array_equal(
      variables["params"]["denseblock1"]["denselayer1"]["norm1"]["scale"], w)
  # timm VGG: a conv pre_logits over the 2x2 grid of the 3-channel features.
  conv = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
  fc1 = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
  variables = pretrained.convert({"features.0.weight": conv,
                                  "pre_logits.fc1.weight": fc1,
                                  "head.fc.weight": np.ones((2, 4), np.float32)})
  assert set(variables["params"]) == {"features_0", "classifier_0",
                                      "classifier_6"}
  kernel = variables["params"]["classifier_0"]["kernel"]  # rows (h, w, c)
  np.testing.assert_array_equal(kernel.reshape(2, 2, 3, 4),
                                fc1.transpose(2, 3, 1, 0))


def test_flatten_order_of_the_first_classifier_layer():
  rng = np.random.default_rng(2)
  c, h, w, out = 3, 2, 2, 4
  weight = rng.standard_normal((out, c * h * w)).astype(np.float32)
  variables = pretrained.convert({
      "features.0.weight": rng.standard_normal((c, 1, 3, 3)).astype(np.float32),
      "classifier.0.weight": weight})
  kernel = variables["params"]["classifier_0"]["kernel"]
  feature_map = rng.standard_normal((c, h, w)).astype(np.float32)
  torch_out = weight @ feature_map.reshape(-1)  # torch flattens [C, H, W]
  ours = feature_map.transpose(1, 2, 0).reshape(-1) @ kernel  # [H, W, C]
  np.testing.assert_allclose(ours, torch_out, rtol=1e-5)


def test_unknown_key_and_unknown_format_are_errors(tmp_path):
  with pytest.raises(ValueError, match="layer1.0.attn.qkv"):
    pretrained.convert({"layer1.0.attn.qkv": np.zeros((2, 2))})
  path = tmp_path / "weights.h5"
  path.write_bytes(b"")
  with pytest.raises(ValueError, match=r"\.h5"):
    pretrained.load(str(path))


def test_safetensors_and_npz_files_read_the_same(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  sd = _synthetic_resnet_state_dict(np.random.default_rng(3))
  safetensors_numpy.save_file(sd, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **sd)
  expected = pretrained.convert(sd)
  for name in ("w.safetensors", "w.npz"):
    jax.tree.map(np.testing.assert_array_equal,
                 pretrained.load(str(tmp_path / name)), expected)


def test_npz_in_our_layout_round_trips(tmp_path):
  model = MODELS["simple_cnn"](num_classes=3, use_batchnorm=True)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          np.zeros((1, 28, 28, 1), np.float32))
  rng = np.random.default_rng(5)
  variables = jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), dict(shapes))
  np.savez(tmp_path / "ours.npz", **pretrained.to_flat_variables(variables))
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load(str(tmp_path / "ours.npz")), variables)


def test_pth_needs_torch_and_is_read_without_pickle_code(tmp_path):
  torch = pytest.importorskip("torch")
  sd = _synthetic_resnet_state_dict(np.random.default_rng(4))
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}},
             tmp_path / "w.pth")
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load(str(tmp_path / "w.pth")),
               pretrained.convert(sd))

  class Payload:  # an arbitrary object: weights_only refuses to unpickle it

    def __reduce__(self):
      return (os.getcwd, ())

  torch.save({"x": Payload()}, tmp_path / "evil.pth")
  with pytest.raises(Exception, match="(?i)weights.only|unsupported"):
    pretrained.load(str(tmp_path / "evil.pth"))


# --- logits parity with torch ---

# (our model, input side): AlexNet's last feature map is 3x3 from 128 pixels
# and VGG's 2x2 from 64, so the 6x6 / 7x7 grids before the classifier vary in
# space and the flatten order matters.
_PARITY = {
    "resnet18": 64,
    "resnet50": 64,
    "vgg16": 64,
    "densenet121": 64,
    "alexnet": 128,
}


def _randomize_batchnorm(torch_model, torch):
  gen = torch.Generator().manual_seed(0)
  for m in torch_model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      # Scales below 1 keep deep residual stacks at logits of order 1, where
      # atol=1e-4 is a tight test of float32 agreement.
      m.weight.data = 0.2 + 0.5 * torch.rand(n, generator=gen)
      m.bias.data = 0.2 * torch.randn(n, generator=gen)
      m.running_mean.data = 0.2 * torch.randn(n, generator=gen)
      m.running_var.data = 0.5 + torch.rand(n, generator=gen)


def _parity(name):
  torch = pytest.importorskip("torch")
  torch_reference = pytest.importorskip("tests.torchvision_reference")
  torch.manual_seed(0)
  torch_model = torch_reference.MODELS[name](num_classes=10).eval()
  _randomize_batchnorm(torch_model, torch)
  side = _PARITY[name]
  x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(
      np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  variables = pretrained.convert(
      {k: v.numpy() for k, v in torch_model.state_dict().items()})
  del torch_model

  model = MODELS[name](num_classes=10)
  x_nhwc = x.transpose(0, 2, 3, 1)
  # Same variables, same shapes as our own initialisation: restoring them all
  # leaves nothing fresh and raises on any missing or misshapen one.
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), x_nhwc)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  jax.tree.map(lambda s, v: np.testing.assert_equal(s.shape, v.shape),
               shapes, variables)
  logits = jax.jit(functools.partial(model.apply, train=False))(variables,
                                                                 x_nhwc)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)
  # Not vacuous: the logits spread far more than they differ (torchvision's
  # 0.01-std classifier init makes them small).
  worst = np.max(np.abs(np.asarray(logits) - expected))
  assert worst < 1e-3 * np.std(expected), (worst, np.std(expected))


def test_resnet18_logits_match_torch():
  _parity("resnet18")


@pytest.mark.slow
def test_resnet50_logits_match_torch():
  _parity("resnet50")


@pytest.mark.slow
def test_vgg16_logits_match_torch():
  _parity("vgg16")


@pytest.mark.slow
def test_densenet121_logits_match_torch():
  _parity("densenet121")


def test_alexnet_logits_match_torch():
  _parity("alexnet")


def test_restore_of_converted_weights_into_a_new_head():
  """Converted weights into a model with other num_classes: all but the head."""
  torch = pytest.importorskip("torch")
  torch_reference = pytest.importorskip("tests.torchvision_reference")
  torch.manual_seed(0)
  sd = {k: v.numpy() for k, v in
        torch_reference.resnet18(num_classes=1000).state_dict().items()}
  model = MODELS["resnet18"](num_classes=7)
  target = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          np.zeros((1, 32, 32, 3), np.float32))
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
  source = pretrained.convert(sd)
  with pytest.raises(ValueError, match=r"params/fc/kernel: \(512, 1000\) in "
                     r"resnet18, \(512, 7\) in the model"):
    restore.restore_variables(transfer_plan.Plan(), target, source, "resnet18")
  merged, restored = restore.restore_variables(
      transfer_plan.Plan(dont_load=("fc/.*",)), target, source, "resnet18")
  assert "params/fc/kernel" not in restored
  assert "params/layer4_1/conv2/kernel" in restored
  np.testing.assert_array_equal(merged["params"]["fc"]["kernel"],
                                np.zeros((512, 7)))
  np.testing.assert_array_equal(
      merged["batch_stats"]["layer1_0"]["bn1"]["var"],
      sd["layer1.0.bn1.running_var"])
