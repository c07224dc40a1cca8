"""What a training run asks of `config.transfer`, in one object.

The loop (training/train.py) builds `TransferHooks(config.transfer,
steps_per_epoch)` once and asks it for
  * the optimizer and forward pass (`optimizer_and_apply`, called by
    training/steps.py's create_train_state): the plan's groups
    (optimizer.py) and frozen forward pass (frozen_forward.py);
  * the start state (`initial_state`): `transfer.init_from` restored into a
    fresh state (restore.py);
  * the per-step hook (`at_step`): after `transfer.unfreeze_after_epochs`,
    the forward pass with the 'unfrozen' group unfrozen. The optimizer
    state's structure never changes; only `state.apply_fn` is swapped, and
    a jitted step retraces once.
Without a transfer section (or with it off) every hook is the identity and
the optimizer is `optim.make_optimizer(config.optim, schedule)`: training is
exactly as without transfer.
"""

import dataclasses
from typing import Any, Callable, Optional

from cnn_jax.training import optim
from cnn_jax.transfer import frozen_forward
from cnn_jax.transfer import optimizer
from cnn_jax.transfer import plan as plan_lib
from cnn_jax.transfer import restore


def unfreeze_step(transfer_config, steps_per_epoch):
  """The global step at which the scheduled unfreezing happens (None: never)."""
  if transfer_config is None or not transfer_config.unfreeze_after_epochs:
    return None
  return int(transfer_config.unfreeze_after_epochs) * steps_per_epoch


def optimizer_and_apply(transfer_config, optim_config, schedule,
                        steps_per_epoch, apply_fn, variables):
  """(tx, apply_fn) of a transfer run, after checking every pattern against
  `variables` ({'params', 'batch_stats'}, arrays or shapes)."""
  plan = plan_lib.Plan.from_config(transfer_config)
  plan.check(variables)
  start = unfreeze_step(transfer_config, steps_per_epoch) or 0
  tx = optimizer.make_optimizer(plan, optim_config, schedule, start)
  return tx, frozen_forward.frozen_apply(apply_fn, plan)


def at_step(state, step, transfer_config, steps_per_epoch):
  """`state` with the forward pass of the phase that global `step` is in
  (before or after the scheduled unfreezing). Cheap: call it before every
  step; it returns `state` itself unless the phase changes (or after a
  resume, whose state has the first phase's apply_fn)."""
  start = unfreeze_step(transfer_config, steps_per_epoch)
  plan = getattr(state.apply_fn, "plan", None)
  if start is None or plan is None or plan.unfrozen == (step >= start):
    return state
  return state.replace(apply_fn=frozen_forward.frozen_apply(
      state.apply_fn.__wrapped__,
      dataclasses.replace(plan, unfrozen=step >= start)))


@dataclasses.dataclass(frozen=True)
class TransferHooks:
  """config.transfer (None: the config has none) bound to a run's epoch
  length: the one thing the training loop holds of transfer learning."""

  transfer_config: Optional[Any]
  steps_per_epoch: int

  @property
  def active(self):
    return plan_lib.is_active(self.transfer_config)

  def optimizer_and_apply(self, optim_config, schedule, apply_fn, variables):
    """(tx, apply_fn): the run's optimizer and forward pass, the plan's
    groups and frozen variables when transfer is on (every pattern checked
    against `variables`, {'params', 'batch_stats'}, arrays or shapes; read
    only then, so None will do when it is off)."""
    if not self.active:
      return optim.make_optimizer(optim_config, schedule), apply_fn
    return optimizer_and_apply(self.transfer_config, optim_config, schedule,
                               self.steps_per_epoch, apply_fn, variables)

  def initial_state(self, state, report: Optional[Callable[[str], Any]] = None):
    """A fresh `state` with `transfer.init_from` restored (restore.py)."""
    return restore.restore_init_from(state, self.transfer_config, report)

  def at_step(self, state, step):
    """`state` with the forward pass of global `step`'s phase (at_step)."""
    return at_step(state, step, self.transfer_config, self.steps_per_epoch)
