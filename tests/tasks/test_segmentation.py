"""Segmentation: per-pixel CE, soft Dice, IoU/Dice metrics, U-Net shapes."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax.data import batching
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.models import MODELS
from cnn_jax.tasks import losses
from cnn_jax.tasks import metrics
from cnn_jax.tasks import segmentation
from cnn_jax.tasks import task_for_run
from cnn_jax.training import steps
from cnn_jax.training import train

# Hand-made 4x4 masks with 3 classes.
LABELS = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 0, 0],
                   [2, 2, 0, 0]])
PREDICTED = np.array([[0, 0, 1, 1],
                      [0, 1, 1, 1],
                      [2, 0, 0, 0],
                      [2, 2, 0, 1]])
# Class 0: TP 6 (of 8 true; 1 -> 1 at (1,1), 1 -> 1 at (3,3)), FP 1 (2,1);
# class 1: TP 4, FP 2, FN 0; class 2: TP 3, FP 0, FN 1.
HAND_IOU = [6 / (6 + 1 + 2), 4 / (4 + 2 + 0), 3 / (3 + 0 + 1)]
HAND_DICE = [2 * 6 / (2 * 6 + 1 + 2), 2 * 4 / (2 * 4 + 2), 2 * 3 / (2 * 3 + 1)]


class MetricsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_confusion_iou_dice_against_hand_counts(self):
    confusion = self.variant(functools.partial(metrics.confusion_matrix,
                                               num_classes=3))(
                                                   LABELS, PREDICTED)
    np.testing.assert_array_equal(confusion, [[6, 2, 0], [0, 4, 0],
                                              [1, 0, 3]])
    iou, dice = metrics.iou_and_dice(confusion)
    np.testing.assert_allclose(iou, HAND_IOU)
    np.testing.assert_allclose(dice, HAND_DICE)

  def test_absent_class_is_nan_and_weights_mask_pixels(self):
    confusion = metrics.confusion_matrix(
        jnp.array([[0, 1], [0, 1]]), jnp.array([[0, 1], [1, 1]]), 4,
        weights=jnp.array([[1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_array_equal(np.asarray(confusion).sum(), 2)
    iou, _ = metrics.iou_and_dice(confusion)
    np.testing.assert_allclose(iou[:2], [1.0, 1.0])
    assert np.isnan(iou[2:]).all()

  def test_task_finalize_over_padded_batches(self):
    task = segmentation.make_segmentation_task(
        class_names=("background", "a", "b"))
    onehot = np.eye(3, dtype=np.float32)[PREDICTED] * 10.0  # logits
    batch = {"label": jnp.asarray(np.stack([LABELS, LABELS])),
             "mask": jnp.array([True, False])}  # the 2nd is padding
    logits = jnp.asarray(np.stack([onehot, np.zeros_like(onehot)]))
    result = task.finalize(task.eval_sums(logits, batch), {})
    self.assertEqual(result["count"], 1)
    np.testing.assert_allclose([result["iou/background"], result["iou/a"],
                                result["iou/b"]], HAND_IOU)
    np.testing.assert_allclose(result["mean_iou"], np.mean(HAND_IOU))
    np.testing.assert_allclose(result["mean_iou_foreground"],
                               np.mean(HAND_IOU[1:]))
    np.testing.assert_allclose(result["mean_dice"], np.mean(HAND_DICE))
    np.testing.assert_allclose(result["accuracy"], 13 / 16)


class LossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_dice_hand_computed(self):
    # One 1x2 image, 2 classes; softmax probabilities p = (0.8, 0.2) and
    # (0.3, 0.7) from log-probabilities; labels (0, 1).
    probs = np.array([[[[0.8, 0.2], [0.3, 0.7]]]])
    logits = jnp.log(probs)
    labels = jnp.array([[[0, 1]]])
    got = self.variant(functools.partial(losses.soft_dice_loss,
                                         smooth=0.0))(logits, labels)
    dice0 = 2 * 0.8 / (0.8 + 0.3 + 1)
    dice1 = 2 * 0.7 / (0.2 + 0.7 + 1)
    np.testing.assert_allclose(got, [1 - (dice0 + dice1) / 2], rtol=1e-6)

  def test_dice_averages_the_classes_present_in_the_target(self):
    # 3 classes; the target holds only 0 and 1, so class 2 is left out of
    # the mean unless absent_classes=True.
    probs = np.array([[[[0.7, 0.1, 0.2], [0.1, 0.6, 0.3]]]])
    logits = jnp.log(probs)
    labels = jnp.array([[[0, 1]]])
    dice0 = (2 * 0.7 + 1) / (0.8 + 1 + 1)
    dice1 = (2 * 0.6 + 1) / (0.7 + 1 + 1)
    dice2 = 1 / (0.5 + 0 + 1)
    np.testing.assert_allclose(losses.soft_dice_loss(logits, labels),
                               [1 - (dice0 + dice1) / 2], rtol=1e-6)
    np.testing.assert_allclose(
        losses.soft_dice_loss(logits, labels, absent_classes=True),
        [1 - (dice0 + dice1 + dice2) / 3], rtol=1e-6)

  def test_perfect_prediction_gives_zero_dice_loss(self):
    logits = jnp.asarray(np.eye(3)[LABELS][None] * 100.0)
    np.testing.assert_allclose(
        losses.soft_dice_loss(logits, jnp.asarray(LABELS)[None]), [0.0],
        atol=1e-6)

  def test_pixel_cross_entropy_is_mean_of_optax(self):
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
    labels = jnp.asarray(np.stack([LABELS, PREDICTED]))
    expected = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean(axis=(1, 2))
    np.testing.assert_allclose(
        losses.pixel_softmax_cross_entropy(logits, labels), expected,
        rtol=1e-6)

  def test_task_loss_weights_the_two_terms(self):
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
    batch = {"label": jnp.asarray(np.stack([LABELS, PREDICTED]))}
    task = segmentation.make_segmentation_task(ce_weight=0.5,
                                               dice_weight=2.0)
    np.testing.assert_allclose(
        task.loss(logits, batch),
        0.5 * losses.pixel_softmax_cross_entropy(logits, batch["label"])
        + 2.0 * losses.soft_dice_loss(logits, batch["label"]), rtol=1e-6)


@pytest.mark.parametrize("depth,upsample", [(2, "transpose"),
                                            (3, "bilinear")])
def test_unet_output_has_input_spatial_shape(depth, upsample):
  model = MODELS["unet"](num_classes=11, features=4, depth=depth,
                         upsample=upsample)
  x = jnp.zeros((2, 32, 24, 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert out.shape == (2, 32, 24, 11)


def test_for_run_checks_the_labels():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"task": "segmentation"})
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match=r"class-per-pixel labels \[N, H, W\]"):
    task_for_run(config, ArrayDataset(images, np.zeros(3, np.int32)))
  with pytest.raises(ValueError, match="differ from the images"):
    task_for_run(config, ArrayDataset(images, np.zeros((3, 4, 4), np.int32)))


@pytest.mark.parametrize("name", ["unet_digits", "oxford_pet"])
def test_segmentation_configs_build(name):
  """Each config names the segmentation task, a known source, and a U-Net
  whose output has the input's size with one logit per class (shapes only)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import SOURCES  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.task == "segmentation" and config.data.name in SOURCES
  model = steps.create_model(config.model)
  size = tuple(config.data.get("image_size", ()) or (64, 64))
  x = jnp.zeros((1, *size, 3 if name == "oxford_pet" else 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert out.shape == (1, *size, config.model.num_classes)


@pytest.mark.slow
def test_unet_digits_config_one_train_step():
  """configs/unet_digits.py builds; one train step and an evaluation run."""
  from configs import unet_digits  # pylint: disable=g-import-not-at-top
  config = unet_digits.get_config()
  config.data.num_train, config.data.num_test = 8, 4
  config.model.features, config.model.depth = 4, 2  # small: compiles fast
  splits = train.load_splits(config.data)
  train_set = splits["train"]
  task = task_for_run(config, train_set)
  assert task.name == "segmentation"
  assert train_set.labels.shape == (8, 64, 64)
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 1)
  mean, std = steps.normalization_stats(config.data, train_set)
  step = jax.jit(functools.partial(steps.train_step, mean=mean, std=std,
                                   task=task))
  batch = next(batching.train_batches(train_set, 4, 0))[1]
  state, logged = step(state, batch)
  assert np.isfinite(logged["loss"])
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=mean, std=std,
                                      task=task))
  result = steps.evaluate(eval_fn, state, splits["test"], 4, task)
  assert result["count"] == 4 and "iou/7" in result and "mean_iou" in result


@pytest.mark.slow
def test_oxford_pet_config_on_tfds_mock_data():
  """configs/oxford_pet.py reads image + mask pairs through TFDS
  (tfds.testing.mock_data), resizes both, and trains one step."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from configs import oxford_pet  # pylint: disable=g-import-not-at-top
  config = oxford_pet.get_config()
  config.data.image_size = (32, 32)
  config.model.features, config.model.depth = 4, 2
  with tfds.testing.mock_data(num_examples=6,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    # Mock trimaps hold random values 0..255: strict mapping names them.
    with pytest.raises(ValueError, match="mask values .* are not among"):
      train.load_splits(config.data)
    config.data.tfds_mask_other = 0
    splits = train.load_splits(config.data)
  train_set = splits["train"]
  assert train_set.images.shape == (6, 32, 32, 3)
  assert train_set.labels.shape == (6, 32, 32)
  assert set(np.unique(train_set.labels)) <= {0, 1, 2}
  task = task_for_run(config, train_set)
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 1)
  mean, std = steps.normalization_stats(config.data, train_set)
  step = jax.jit(functools.partial(steps.train_step, mean=mean, std=std,
                                   task=task))
  state, logged = step(state, next(batching.train_batches(train_set, 3, 0))[1])
  assert np.isfinite(logged["loss"])


def test_tfds_segmentation_source_on_mock_data():
  """Image + mask pairs of different sizes are resized to image_size."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import load_splits  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict({
      "name": "tfds_segmentation", "tfds_name": "oxford_iiit_pet",
      "image_size": (24, 16), "tfds_mask_values": (2, 1, 3),
      "tfds_mask_other": 0, "num_workers": 1})
  with tfds.testing.mock_data(num_examples=3,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    splits = load_splits(data)
  assert splits["test"].images.shape == (3, 24, 16, 3)
  assert splits["test"].labels.shape == (3, 24, 16)
  assert splits["test"].class_names == ("background", "pet", "border")


def test_mask_classes_maps_raw_values():
  from cnn_jax.data import tfds_segmentation  # pylint: disable=g-import-not-at-top
  raw = np.array([[1, 2], [3, 2]], np.uint8)
  np.testing.assert_array_equal(
      tfds_segmentation.mask_classes(raw, (2, 1, 3)), [[1, 0], [2, 0]])
