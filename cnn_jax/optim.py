"""Optimizers and learning-rate schedules from optax, chosen by config.optim."""

import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle")


def make_schedule(optim_config, total_steps, steps_per_epoch):
  """The learning rate as a function of the step (an optax schedule)."""
  lr = optim_config.learning_rate
  name = optim_config.schedule
  warmup_steps = int(round(optim_config.warmup_epochs * steps_per_epoch))
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps,
                                       alpha=optim_config.end_lr_factor)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=lr * optim_config.end_lr_factor)
  if name == "one_cycle":
    # pct_start as a fraction of training; default 0.25 when no warmup given.
    pct_start = (warmup_steps / total_steps) if warmup_steps else 0.25
    return optax.cosine_onecycle_schedule(
        transition_steps=total_steps, peak_value=lr, pct_start=pct_start)
  raise ValueError(
      f"config.optim.schedule={name!r} is not one of: {', '.join(SCHEDULES)}")


def make_optimizer(optim_config, learning_rate):
  """An optax GradientTransformation for `config.optim` and a schedule."""
  name = optim_config.name
  wd = optim_config.weight_decay
  if name in ("sgd", "momentum", "nesterov"):
    tx = optax.sgd(learning_rate,
                   momentum=None if name == "sgd" else optim_config.momentum,
                   nesterov=name == "nesterov")
    if wd:
      tx = optax.chain(optax.add_decayed_weights(wd), tx)
  elif name == "adam":
    tx = optax.adam(learning_rate, b1=optim_config.b1, b2=optim_config.b2)
    if wd:  # L2 through the gradient, as torch's Adam(weight_decay=...)
      tx = optax.chain(optax.add_decayed_weights(wd), tx)
  elif name == "adamw":
    tx = optax.adamw(learning_rate, b1=optim_config.b1, b2=optim_config.b2,
                     weight_decay=wd)
  else:
    raise ValueError(
        f"config.optim.name={name!r} is not one of: {', '.join(OPTIMIZERS)}")
  if optim_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm),
                     tx)
  return tx
