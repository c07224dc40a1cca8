"""configs/cifar10_simple.py builds and takes training steps on the bundled
CIFAR-10 subset, with crop+flip, and with mixup/cutmix soft targets."""

import functools

import chex
import jax
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.tasks import losses
from cnn_jax.training import steps
from configs import cifar10_simple


def _state_and_batch(config):
  train_set = load_splits(config.data)["train"]
  mean, std = steps.normalization_stats(config.data, train_set)
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 10)
  _, batch = next(prefetch.prefetch_to_device(batching.train_batches(
      train_set, config.data.batch_size, config.seed)))
  return state, batch, mean, std


def test_config_takes_steps_with_crop_and_flip():
  config = cifar10_simple.get_config()
  assert config.data.augment.crop_padding == 4 and config.data.augment.flip
  config.data.batch_size = 32
  state, batch, mean, std = _state_and_batch(config)
  assert batch["image"].shape == (32, 32, 32, 3)
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict()))
  state, metrics = step(state, batch)
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  chex.assert_tree_all_finite(state.params)


def test_mixup_trains_on_soft_targets():
  config = cifar10_simple.get_config()
  config.data.batch_size = 8
  config.data.augment.mixup_alpha = 0.4
  config.model.features = (8,)  # a small net: this test is about the loss
  config.model.hidden = 16
  state, batch, mean, std = _state_and_batch(config)
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict()))
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert not np.allclose(new_state.params["head"]["kernel"],
                         state.params["head"]["kernel"])


def test_soft_target_loss_equals_hard_loss_on_one_hot_targets():
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  labels = np.array([0, 3, 1, 4])
  np.testing.assert_allclose(
      losses.soft_target_cross_entropy(logits, jax.nn.one_hot(labels, 5), 0.1),
      losses.softmax_cross_entropy(logits, labels, 0.1), rtol=1e-6)


def test_resnet18_config_takes_a_step():
  from configs import cifar10_resnet18  # pylint: disable=g-import-not-at-top
  config = cifar10_resnet18.get_config()
  config.data.batch_size = 8
  state, batch, mean, std = _state_and_batch(config)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  assert n_params == 11_173_962
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict()))
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert new_state.batch_stats  # BN statistics are tracked
