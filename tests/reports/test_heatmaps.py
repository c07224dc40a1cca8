"""CAM and Grad-CAM (cnn_jax/reports/heatmaps.py), overlays, --mode=heatmap."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.models import MODELS
from cnn_jax.reports import heatmap_mode
from cnn_jax.reports import heatmaps


class GapNet(nn.Module):
  """conv -> BN 'norm5' -> ReLU -> global average pool -> dense
  'classifier': DenseNet's head on a tiny trunk (fast to build)."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3), strides=2, name="conv0")(x)
    x = nn.BatchNorm(use_running_average=not train, name="norm5")(x)
    return nn.Dense(3, name="classifier")(nn.relu(x).mean(axis=(1, 2)))


def _with_bias(variables):
  # A non-zero bias and BN statistics, so the identities check them too.
  variables = jax.tree_util.tree_map(lambda x: x, variables)
  variables["params"]["classifier"]["bias"] = jnp.array([0.3, -0.2, 0.1])
  variables["batch_stats"]["norm5"]["mean"] += 0.1
  return variables


@pytest.fixture(scope="module")
def gap_net():
  model = GapNet()
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 1))
  return model, _with_bias(model.init(jax.random.PRNGKey(0), images)), images


def _check_cam_identity(model, variables, images):
  logits, norm5 = heatmaps.capture(model, variables, images, "norm5")
  kernel = variables["params"]["classifier"]["kernel"]
  bias = variables["params"]["classifier"]["bias"]
  maps = heatmaps.cam(model, variables, images)
  assert maps.shape == (*norm5.shape[:3], 3)
  # CAM = the dense head's weights at every position of relu(norm5).
  np.testing.assert_allclose(
      maps, jnp.einsum("bhwc,cl->bhwl", nn.relu(norm5), kernel), rtol=1e-6)
  # Exact identity: mean over positions + bias = the model's logits.
  np.testing.assert_allclose(maps.mean(axis=(1, 2)) + bias, logits,
                             rtol=1e-5, atol=1e-6)
  with_bias = heatmaps.class_activation_map(nn.relu(norm5), kernel, bias)
  np.testing.assert_allclose(with_bias.mean(axis=(1, 2)), logits, rtol=1e-5,
                             atol=1e-6)
  # HiResCAM at the feature layer is the CAM over the number of positions.
  hires = heatmaps.grad_cam(model, variables, images, "norm5",
                            jnp.array([0, 2]), elementwise=True)
  positions = maps.shape[1] * maps.shape[2]
  expected = nn.relu(jnp.stack([maps[0, :, :, 0], maps[1, :, :, 2]]))
  np.testing.assert_allclose(hires * positions, expected, rtol=1e-5,
                             atol=1e-6)


def test_cam_is_the_head_applied_to_the_last_feature_map(gap_net):
  _check_cam_identity(*gap_net)


@pytest.mark.slow
def test_cam_identity_on_densenet():
  model = MODELS["densenet121"](num_classes=3, block_config=(1, 1),
                                growth_rate=4, num_init_features=8)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 1))
  variables = _with_bias(jax.jit(model.init)(jax.random.PRNGKey(0), images))
  _check_cam_identity(model, variables, images)
  layers = heatmaps.spatial_layers(model, variables, images[:1])
  assert layers[0] == "conv0" and layers[-1] == "norm5"


class RegionModel(nn.Module):
  """Looks only at rows 4..11, columns 16..27 of a 32x32 image: the input
  outside that region is zeroed before two convolutions, a global average
  pool and a dense head (all biases zero)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    region = np.zeros((1, 32, 32, 1), np.float32)
    region[:, 4:12, 16:28] = 1.0
    x = x * region
    x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3, 3), name="features")(x))
    return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_grad_cam_highlights_the_region_the_output_depends_on():
  model = RegionModel()
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(1), images)
  # The unit whose weights are mostly positive, so the map is not all zero.
  unit = int(np.argmax(np.sum(variables["params"]["head"]["kernel"], 0)))
  maps = heatmaps.grad_cam(model, variables, images, "features",
                           jnp.full((3,), unit))
  assert maps.shape == (3, 32, 32)
  # Two 3x3 convs reach 2 pixels beyond the region.
  reach = np.zeros((32, 32), bool)
  reach[2:14, 14:30] = True
  inside = np.asarray(maps)[:, reach].sum(axis=1)
  total = np.asarray(maps).sum(axis=(1, 2))
  assert (total > 0).all()
  np.testing.assert_allclose(inside / total, 1.0, atol=1e-6)
  # Upsampled (as for overlays), the hottest pixel is in the region.
  big = heatmaps.upsample(maps, (64, 64))
  for b in range(3):
    y, x = np.unravel_index(int(np.argmax(big[b])), (64, 64))
    assert reach[y // 2, x // 2]


class GatedModel(nn.Module):
  """A convolution over the whole image whose output counts only in one
  region (a gate after the layer): HiResCAM keeps to the region."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = nn.relu(nn.Conv(4, (3, 3), name="features")(x))
    gate = np.zeros((1, 16, 16, 1), np.float32)
    gate[:, 2:6, 9:14] = 1.0
    return nn.Dense(1, name="head")((h * gate).mean(axis=(1, 2)))


def test_hirescam_follows_a_gate_after_the_layer():
  model = GatedModel()
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, 16, 16, 1))
  variables = model.init(jax.random.PRNGKey(3), images)
  maps = np.asarray(heatmaps.grad_cam(model, variables, images, "features",
                                      jnp.zeros(2, jnp.int32),
                                      elementwise=True))
  outside = np.ones((16, 16), bool)
  outside[2:6, 9:14] = False
  assert (maps[:, outside] == 0).all()


def test_unknown_layer_lists_the_modules(gap_net):
  model, variables, images = gap_net
  with pytest.raises(ValueError, match="'nope' is not a module of GapNet; "
                     "its modules: conv0, norm5, classifier"):
    heatmaps.capture(model, variables, images, "nope")
  assert heatmaps.spatial_layers(model, variables, images[:1]) == [
      "conv0", "norm5"]


def test_a_block_whose_conv_shares_its_path_is_one_layer():
  """The simple CNN's 'conv2' is a ConvReluMaxPool whose inner conv has the
  same path: capture and Grad-CAM take the block's output (pooled,
  rectified), and the gradient is the logit's at that output."""
  model = MODELS["simple_cnn"](num_classes=3, features=(4, 6), hidden=8)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)),
                       jnp.float32)
  variables = model.init(jax.random.key(0), images)
  assert heatmaps.spatial_layers(model, variables, images) == ["conv1",
                                                               "conv2"]
  _, block = heatmaps.capture(model, variables, images, "conv2")
  assert block.shape == (2, 2, 2, 6) and float(jnp.min(block)) >= 0.0
  activation, gradient = heatmaps.layer_gradient(
      model, variables, images, "conv2", jnp.array([0, 2]))
  np.testing.assert_array_equal(activation, block)
  # The head sees the block's output flattened: d logit / d block, directly.
  params = variables["params"]

  def logits_from_block(b):
    x = b.reshape((b.shape[0], -1))
    x = nn.relu(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return x @ params["head"]["kernel"] + params["head"]["bias"]
  expected = jax.vmap(lambda b, c: jax.grad(
      lambda b: logits_from_block(b[None])[0, c])(b))(block, jnp.array([0, 2]))
  np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-6)


def test_mask_overlay_paints_only_labelled_pixels():
  image = np.full((4, 4, 1), 128, np.uint8)
  mask = np.zeros((4, 4), np.int32)
  mask[1, 2] = 3
  picture = heatmaps.mask_overlay(image, mask, num_classes=11)
  assert picture.shape == (4, 4, 3)
  np.testing.assert_allclose(picture[0, 0], [128 / 255] * 3)
  assert not np.allclose(picture[1, 2], [128 / 255] * 3)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["multidigit", "unet_digits"])
def test_heatmap_mode_writes_pngs_from_a_checkpoint(tmp_path, config_name):
  """A few steps of the config, then write_heatmaps from its checkpoint."""
  import importlib  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import train  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.data.num_train, config.data.num_test = 32, 8
  config.data.batch_size, config.data.eval_batch_size = 16, 8
  config.train.num_epochs = 1
  if config_name == "unet_digits":
    config.model.features, config.model.depth = 4, 2
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  folder, paths = heatmap_mode.write_heatmaps(config, workdir, count=3)
  assert folder == os.path.join(workdir, "heatmaps") and len(paths) == 3
  assert all(os.path.getsize(p) > 1000 for p in paths)
  if config_name == "multidigit":  # Grad-CAM at a named layer works too
    _, paths = heatmap_mode.write_heatmaps(config, workdir, method="gradcam",
                                       layer="denseblock2", count=2)
    assert len(paths) == 2 and "heatmaps_step" in paths[0]
