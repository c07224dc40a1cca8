"""The device side of a search's slot changes, on the stacked state [K, ...]
of cnn_jax/sweeps/sweep_steps.py (one compiled program for K slots):

  * replace_slots: a stopped trial's slot re-initialised in place, a masked
    select (jnp.where over the member axis) between fresh and current states;
  * gather_members: PBT's exploit, member k takes member src[k]'s params,
    batch_stats, optimizer state, step and rng (a gather along the axis);
  * with_hyperparameters: per-member hyperparameter arrays written where the
    step reads them (opt_state.hyperparams for optimizer keys, the `hparams`
    dict of sweep_steps.hyperparameter_arrays for dropout and smoothing).
"""

import jax
import jax.numpy as jnp

# Search-space keys that are per-member arrays of the step (besides seed,
# which only picks the initial state and the data order).
OPTIM_PREFIX = "optim."
HPARAM_KEYS = {"model.dropout_rate": "dropout_rate",
               "train.label_smoothing": "label_smoothing"}


def _select(mask, fresh, current):
  shape = (-1,) + (1,) * (current.ndim - 1)
  return jnp.where(mask.reshape(shape), fresh, current)


@jax.jit
def replace_slots(mask, fresh, states):
  """states with slot k replaced by fresh's slot k where mask[k] (bool [K])."""
  return jax.tree.map(lambda f, c: _select(mask, f, c), fresh, states)


@jax.jit
def gather_members(src, states):
  """states with member k = states' member src[k] (int [K]), bitwise."""
  return jax.tree.map(lambda x: x[src], states)


def with_hyperparameters(states, hparams, values):
  """(states, hparams) with {dotted key: [K] values} set per member.

  Optimizer keys go to states.opt_state.hyperparams (keeping their dtype),
  model.dropout_rate / train.label_smoothing to `hparams`; other keys (seed)
  are not per-step values and are ignored.
  """
  hyper = dict(states.opt_state.hyperparams)
  hparams = dict(hparams)
  for name, column in values.items():
    if name.startswith(OPTIM_PREFIX):
      key = name[len(OPTIM_PREFIX):]
      hyper[key] = jnp.asarray(column, hyper[key].dtype)
    elif name in HPARAM_KEYS:
      key = HPARAM_KEYS[name]
      hparams[key] = jnp.asarray(column, hparams[key].dtype)
  opt_state = states.opt_state._replace(hyperparams=hyper)
  return states.replace(opt_state=opt_state), hparams


def is_per_step(name):
  """Whether PBT can change `name` mid-training (not seed)."""
  return name.startswith(OPTIM_PREFIX) or name in HPARAM_KEYS
