"""The optimizer of a transfer run: one optax optimizer per plan group.

Frozen params are in the 'frozen' group of `optax.multi_transform`, whose
update is -0.0: no step, no weight decay, and no optimizer state (the other
groups' moments hold `optax.MaskedNode` where a frozen parameter would be).
This is the only place where freezing goes through optax masks.

Each trainable group is `optim.make_optimizer(config.optim, its schedule)`
without clipping; `config.optim.grad_clip_norm` clips the global norm over
all trainable gradients before the groups, as torch's clip_grad_norm_ would.

Scheduled unfreezing keeps the optimizer state's structure fixed for the
whole run (so any checkpoint restores into `create_train_state`'s state):
the 'unfrozen' group holds its moments from the start, untouched and with
updates of -0.0 until the unfreeze step, from which it runs as a fresh
optimizer would (its schedule shifted to start there).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnn_jax.training import optim
from cnn_jax.transfer.plan import BACKBONE, FROZEN, HEAD, UNFROZEN

def _keep_unchanged():
  """The frozen group's transform: optax.set_to_zero, but -0.0: p + (-0.0)
  is p bit for bit for every float p, while a -0.0 parameter + 0.0 is +0.0.
  No state."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


class StartingAtState(NamedTuple):
  count: jax.Array  # updates so far (the global step)
  inner_state: optax.OptState


def _starting_at(inner, start_step):
  """`inner`, idle before global step `start_step`: until then its updates
  are -0.0 and its state stays as initialised, so from `start_step` on it
  runs exactly as a fresh `inner` would."""

  def init(params):
    return StartingAtState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner_state, params)
    active = state.count >= start_step
    new_inner = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                             new_inner, state.inner_state)
    new_updates = jax.tree.map(
        lambda u: jnp.where(active, u, jnp.asarray(-0.0, u.dtype)),
        new_updates)
    return new_updates, StartingAtState(
        optax.safe_int32_increment(state.count), new_inner)

  return optax.GradientTransformation(init, update)


def _schedule_times(schedule, scale, offset=0):
  """scale * schedule(count + offset), keeping optim's ScaledSchedule form
  (its peak stays a hyperparameter in the optimizer state)."""
  if isinstance(schedule, optim.ScaledSchedule):
    shape = schedule.shape
    return optim.ScaledSchedule(
        schedule.peak * scale,
        (lambda count: shape(count + offset)) if offset else shape)
  if callable(schedule):
    return lambda count: scale * schedule(count + offset)
  return scale * schedule


def make_optimizer(plan, optim_config, schedule, unfreeze_step=0):
  """chain(global-norm clipping, multi_transform(one optimizer per group)).

  Args:
    plan: a Plan.
    optim_config: config.optim (grad_clip_norm applies once, globally).
    schedule: the run's learning-rate schedule (or a float).
    unfreeze_step: the global step at which the 'unfrozen' group starts
      (its optimizer counts from 0 there, so its schedule is shifted by it).
  """
  inner_config = ml_collections.ConfigDict(optim_config.to_dict())
  inner_config.grad_clip_norm = 0.0
  transforms = {
      FROZEN: _keep_unchanged(),
      HEAD: optim.make_optimizer(inner_config, schedule),
  }
  if plan.mode == "fine_tune":
    transforms[BACKBONE] = optim.make_optimizer(
        inner_config, _schedule_times(schedule, plan.backbone_lr_scale))
  if plan.unfreeze:
    transforms[UNFROZEN] = _starting_at(optim.make_optimizer(
        inner_config, _schedule_times(schedule, plan.backbone_lr_scale,
                                      unfreeze_step)), unfreeze_step)
  clip = (optax.clip_by_global_norm(optim_config.grad_clip_norm)
          if optim_config.grad_clip_norm else optax.identity())
  return optax.chain(clip, optax.multi_transform(transforms, plan.labels))
