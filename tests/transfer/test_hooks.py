"""transfer.hooks.TransferHooks: what the training loop holds of transfer
learning. Off (or absent), every hook is the identity; on, it hands out the
plan's optimizer groups and frozen forward pass, and unfreezes on schedule.
"""

import functools

import jax
import jax.numpy as jnp

from cnn_jax.training import steps
from cnn_jax.transfer import hooks
from cnn_jax.transfer import plan as transfer_plan
from configs import mnist as mnist_config

SHAPE = (28, 28, 1)


def _config():
  config = mnist_config.get_config()
  config.model.features = (8, 16)
  config.model.hidden = 32
  config.model.use_batchnorm = True
  return config


def _variables(config):
  model = steps.create_model(config.model)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False),
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
      jnp.zeros((1, *SHAPE)))
  return model, {"params": variables["params"],
                 "batch_stats": variables.get("batch_stats", {})}


def test_without_transfer_every_hook_is_the_identity():
  config = _config()
  model, variables = _variables(config)
  for transfer_config in (None, transfer_plan.default_transfer_config()):
    transfer = hooks.TransferHooks(transfer_config, 10)
    assert not transfer.active
    tx, apply_fn = transfer.optimizer_and_apply(config.optim, 1e-3,
                                                model.apply, variables)
    assert apply_fn == model.apply  # a bound method: equal, not identical
    assert not hasattr(apply_fn, "plan")
    assert jax.eval_shape(tx.init, variables["params"]) is not None
    state = steps.abstract_train_state(config, SHAPE, 10)
    assert transfer.initial_state(state) is state
    assert transfer.at_step(state, 5) is state


def test_with_transfer_the_plan_freezes_and_unfreezes_on_schedule():
  config = _config()
  config.transfer = transfer_plan.default_transfer_config()
  config.transfer.freeze = ("conv1/.*", "bn1/.*")
  config.transfer.unfreeze_after_epochs = 1
  config.transfer.unfreeze = ("conv1/.*",)
  config.transfer.backbone_lr_scale = 0.5
  model, variables = _variables(config)
  transfer = hooks.TransferHooks(config.transfer, 10)
  assert transfer.active
  _, apply_fn = transfer.optimizer_and_apply(config.optim, 1e-3, model.apply,
                                             variables)
  assert apply_fn.__wrapped__ == model.apply
  assert not apply_fn.plan.unfrozen
  state = steps.abstract_train_state(config, SHAPE, 10)
  assert hasattr(state.apply_fn, "plan")
  assert transfer.initial_state(state) is state  # no init_from
  assert transfer.at_step(state, 9) is state
  assert transfer.at_step(state, 10).apply_fn.plan.unfrozen
