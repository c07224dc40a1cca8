"""configs/imagenet_resnet{18,50}.py end to end on a generated ImageNet-layout
folder of JPEGs (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG), and on a TFDS
imagenet2012 array-record copy of it (--config.data.name=tfds): a couple of
steps through the Grain pipeline at a tiny image size, evaluated on val/
(TFDS: 'validation')."""

import numpy as np
import pytest

from cnn_jax.data import load_splits
from cnn_jax.data import photo_like
from cnn_jax.data.image_files import FileImages
from cnn_jax.data.tfds_images import EncodedImages
from cnn_jax.training import train
from cnn_jax.data import tfds_write
from configs import imagenet_resnet18
from configs import imagenet_resnet50


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  return photo_like.write_imagenet_folder(str(root), num_classes=3,
                                          per_class=4, val_per_class=2,
                                          size=(120, 90), seed=1)


def _tiny(config, data_dir):
  config.data.data_dir = data_dir
  config.data.image_size = (32, 32)
  config.data.batch_size = 4
  config.data.eval_batch_size = 4
  config.data.workers = 1
  config.model.num_classes = 3
  config.model.dtype = "float32"
  config.train.num_epochs = 1  # 12 images: 3 steps
  config.optim.warmup_epochs = 0.5
  return config


def test_the_recipe():
  config = imagenet_resnet50.get_config()
  assert config.optim.learning_rate == 0.1  # x B / 256 at B = 256
  assert (config.optim.name, config.optim.momentum) == ("momentum", 0.9)
  assert not config.optim.decay_norm_and_bias
  assert config.train.label_smoothing == 0.1
  assert config.data.random_crop_scale == (0.08, 1.0)
  assert imagenet_resnet18.get_config().model.name == "resnet18"


def test_val_is_the_test_split_read_from_files(imagenet_dir):
  config = _tiny(imagenet_resnet18.get_config(), imagenet_dir)
  splits = load_splits(config.data)
  assert set(splits) == {"train", "test"}
  assert len(splits["train"]) == 12 and len(splits["test"]) == 6
  assert isinstance(splits["train"].images, FileImages)
  # Evaluation: the center crop, uint8 at the model size.
  images = splits["test"].images[np.arange(2)]
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


# Both ResNet-18 runs compile the same programs: the second reads them from
# launch_env's compilation cache.
@pytest.mark.usefixtures("launch_env")
def test_resnet18_trains_end_to_end_from_jpegs(imagenet_dir, tmp_path):
  config = _tiny(imagenet_resnet18.get_config(), imagenet_dir)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["status"] == "finished" and summary["steps"] == 3
  assert summary["test_examples"] == 6
  assert np.isfinite(summary["test_loss"])


@pytest.mark.usefixtures("launch_env")
def test_resnet18_trains_end_to_end_from_tfds_imagenet2012(imagenet_dir,
                                                          tmp_path):
  config = _tiny(imagenet_resnet18.get_config(),
                 tfds_write.write_tfds_imagenet(str(tmp_path / "tfds"),
                                                   imagenet_dir))
  config.data.name = "tfds"  # as --config.data.name=tfds on the command line
  splits = load_splits(config.data)
  assert isinstance(splits["train"].images, EncodedImages)
  assert (len(splits["train"]), len(splits["test"])) == (12, 6)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["status"] == "finished" and summary["steps"] == 3
  assert summary["test_examples"] == 6
  assert np.isfinite(summary["test_loss"])


@pytest.mark.slow
def test_resnet50_trains_end_to_end_from_jpegs(imagenet_dir, tmp_path):
  config = _tiny(imagenet_resnet50.get_config(), imagenet_dir)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["status"] == "finished" and summary["steps"] == 3


def test_weight_decay_on_kernels_only():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import optim  # pylint: disable=g-import-not-at-top
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
            "bn": {"scale": jnp.ones(4)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for decay_all, decayed in ((True, 3), (False, 1)):
    optim_config = imagenet_resnet50.get_config().optim
    optim_config.decay_norm_and_bias = decay_all
    tx = optim.make_optimizer(optim_config, 0.1)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = [bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)]
    assert sum(moved) == decayed
    assert bool(jnp.any(updates["conv"]["kernel"] != 0))
