"""Optimizers and learning-rate schedules from optax, chosen by config.optim.

Every optimizer is wrapped in `optax.inject_hyperparams`: its numeric
hyperparameters (HYPERPARAMS) are arrays in `opt_state.hyperparams`, not
compile-time constants. A vmapped sweep (cnn_jax/sweeps/sweep.py) therefore gives
each member its own values in one compiled program, and the optimizer
state has the same structure whatever the values are (a weight decay of 0
is a decay term times 0), so a sweep member's checkpoint restores as an
ordinary single run.
"""

import dataclasses
from typing import Callable

import jax
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle")

# config.optim keys held in opt_state.hyperparams, per optimizer.
HYPERPARAMS = {
    "sgd": ("learning_rate", "weight_decay"),
    "momentum": ("learning_rate", "weight_decay", "momentum"),
    "nesterov": ("learning_rate", "weight_decay", "momentum"),
    "adam": ("learning_rate", "weight_decay", "b1", "b2"),
    "adamw": ("learning_rate", "weight_decay", "b1", "b2"),
}


@dataclasses.dataclass(frozen=True)
class ScaledSchedule:
  """A learning-rate schedule as peak * shape(step), shape peaking at 1.

  Called like any optax schedule. make_optimizer keeps `peak` as the
  'learning_rate' hyperparameter (an array a sweep may set per member) and
  evaluates `shape` each step as 'lr_factor'.
  """

  peak: float
  shape: Callable

  def __call__(self, step):
    return self.peak * self.shape(step)


def check_schedule(optim_config, num_epochs, steps_per_epoch=None):
  """Raises ValueError naming the config keys when config.optim's schedule
  does not fit a run of `num_epochs` (config.train.num_epochs) epochs: a
  warm-up longer than the run (for warmup_cosine, optax would raise on
  negative decay steps after data loading; one_cycle would silently never
  reach its peak), a negative warm-up, an end factor outside [0, 1].

  Needs no data, so train_and_evaluate (and a sweep's) call it before any
  I/O; with `steps_per_epoch` (learning_rate_schedule) it also checks the
  warm-up rounded to whole steps.
  """
  name = optim_config.schedule
  if name not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={name!r} is not one of: "
                     f"{', '.join(SCHEDULES)}")
  if num_epochs <= 0:
    raise ValueError(f"config.train.num_epochs={num_epochs} must be > 0")
  if name in ("cosine", "warmup_cosine") and not (
      0.0 <= optim_config.end_lr_factor <= 1.0):
    raise ValueError(f"config.optim.end_lr_factor="
                     f"{optim_config.end_lr_factor} is not in [0, 1] ({name}: "
                     "the final learning rate over the peak)")
  if name not in ("warmup_cosine", "one_cycle"):
    return  # constant, cosine: warmup_epochs is not read
  warmup = optim_config.warmup_epochs
  if warmup < 0:
    raise ValueError(f"config.optim.warmup_epochs={warmup} must be >= 0")
  # warmup_cosine needs steps to decay in after its warm-up. one_cycle may
  # warm up for the whole run (configs/mnist.py for 1 epoch), though optax
  # then drops the warm-up (pct_start=1: it anneals from peak / 25).
  if name == "one_cycle":
    fits, must = (lambda warm, run: warm <= run), "must not be longer than"
  else:
    fits, must = (lambda warm, run: warm < run), "must be shorter than"
  if not fits(warmup, num_epochs):
    raise ValueError(f"config.optim.warmup_epochs={warmup} {must} "
                     f"config.train.num_epochs={num_epochs} ({name})")
  if steps_per_epoch:
    warmup_steps = int(round(warmup * steps_per_epoch))
    total_steps = num_epochs * steps_per_epoch
    if not fits(warmup_steps, total_steps):
      raise ValueError(
          f"config.optim.warmup_epochs={warmup} ({warmup_steps} steps) {must} "
          f"config.train.num_epochs={num_epochs} ({total_steps} steps of "
          f"{steps_per_epoch}) ({name})")


def _unit_schedule(optim_config, total_steps, steps_per_epoch):
  """The schedule's shape with a peak of 1 (every schedule here is linear in
  its peak, so peak * shape is the schedule)."""
  name = optim_config.schedule
  warmup_steps = int(round(optim_config.warmup_epochs * steps_per_epoch))
  if name == "constant":
    return optax.constant_schedule(1.0)
  if name == "cosine":
    return optax.cosine_decay_schedule(1.0, total_steps,
                                       alpha=optim_config.end_lr_factor)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=optim_config.end_lr_factor)
  if name == "one_cycle":
    # pct_start as a fraction of training; default 0.25 when no warmup given.
    pct_start = (warmup_steps / total_steps) if warmup_steps else 0.25
    return optax.cosine_onecycle_schedule(
        transition_steps=total_steps, peak_value=1.0, pct_start=pct_start)
  raise ValueError(
      f"config.optim.schedule={name!r} is not one of: {', '.join(SCHEDULES)}")


def make_schedule(optim_config, total_steps, steps_per_epoch):
  """The learning rate as a function of the step: a ScaledSchedule with
  peak config.optim.learning_rate."""
  return ScaledSchedule(
      optim_config.learning_rate,
      _unit_schedule(optim_config, total_steps, steps_per_epoch))


def kernels_only(params):
  """Weight-decay mask: True for kernels (ndim >= 2), False for biases and
  norm scales/offsets (ndim 1), which the ImageNet recipes do not decay."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _optimizer(learning_rate, lr_factor, weight_decay, momentum=None, b1=None,
               b2=None, *, name, grad_clip_norm, decay_norm_and_bias=True):
  """The optax transformation; numeric arguments may be arrays (injected).
  Those an optimizer does not use stay None (so not in its hyperparams)."""
  lr = learning_rate * lr_factor
  mask = None if decay_norm_and_bias else kernels_only
  if name in ("sgd", "momentum", "nesterov"):
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.sgd(lr, momentum=momentum,
                               nesterov=name == "nesterov"))
  elif name == "adam":  # L2 through the gradient, as torch's Adam(weight_decay=...)
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.adam(lr, b1=b1, b2=b2))
  else:  # adamw
    tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def make_optimizer(optim_config, learning_rate):
  """An optax GradientTransformation for `config.optim`.

  Args:
    optim_config: config.optim (name, weight_decay, momentum, b1, b2,
      grad_clip_norm).
    learning_rate: a float, a ScaledSchedule from make_schedule, or any optax
      schedule (then the learning rate is recomputed from the step and cannot
      be set per sweep member).

  Returns the transformation; its state is an optax
  InjectStatefulHyperparamsState whose `hyperparams` hold HYPERPARAMS[name]
  (plus 'lr_factor', the schedule's shape at the step).
  """
  name = optim_config.name
  if name not in OPTIMIZERS:
    raise ValueError(
        f"config.optim.name={name!r} is not one of: {', '.join(OPTIMIZERS)}")
  if isinstance(learning_rate, ScaledSchedule):
    peak, factor = learning_rate.peak, learning_rate.shape
  else:
    peak, factor = learning_rate, 1.0
  values = {"learning_rate": peak, "weight_decay": optim_config.weight_decay,
            "momentum": optim_config.momentum, "b1": optim_config.b1,
            "b2": optim_config.b2}
  hyperparams = {k: float(values[k]) if not callable(values[k])
                 else values[k] for k in HYPERPARAMS[name]}
  tx = optax.inject_hyperparams(
      _optimizer,
      static_args=("name", "grad_clip_norm", "decay_norm_and_bias"))(
          lr_factor=factor, name=name,
          grad_clip_norm=optim_config.grad_clip_norm,
          # False: weight decay on kernels only (kernels_only).
          decay_norm_and_bias=optim_config.get("decay_norm_and_bias", True),
          **hyperparams)
  return _with_plateau(tx, optim_config)


def _with_plateau(tx, optim_config):
  """`tx` followed by optax.contrib.reduce_on_plateau when
  config.optim.plateau_factor > 0: the updates are scaled by factor each
  time the training loss (train_step passes value=loss), averaged over
  plateau_accumulation_steps steps, has not improved (relative tolerance
  plateau_rtol) for plateau_patience such averages, then plateau_cooldown
  averages pass before the next reduction. The state is then a tuple
  (optimizer state, plateau state); the learning rate logged by train.py is
  the schedule's, before this scale."""
  factor = optim_config.get("plateau_factor", 0.0)
  if not factor:
    return tx
  if not 0.0 < factor < 1.0:
    raise ValueError(f"config.optim.plateau_factor={factor} is not in (0, 1) "
                     "(0: off)")
  return optax.chain(tx, optax.contrib.reduce_on_plateau(
      factor=factor, patience=optim_config.get("plateau_patience", 1),
      rtol=optim_config.get("plateau_rtol", 1e-4),
      cooldown=optim_config.get("plateau_cooldown", 0),
      accumulation_size=optim_config.get("plateau_accumulation_steps", 1)))
