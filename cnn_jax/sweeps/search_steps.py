"""The device side of a search's slot changes, on the stacked state [K, ...]
of cnn_jax/sweeps/sweep_steps.py (one compiled program for K slots):

  * replace_slots: a stopped trial's slot re-initialised in place, a masked
    select (jnp.where over the member axis) between fresh and current states;
  * gather_members: PBT's exploit, member k takes member src[k]'s params,
    batch_stats, optimizer state, step and rng (a gather along the axis);
  * with_hyperparameters: per-member hyperparameter arrays written where the
    step reads them (opt_state.hyperparams for optimizer keys, the `hparams`
    dict of sweep_steps.hyperparameter_arrays for dropout and smoothing);
  * SlotSteps: the train step as one program per slot (the CPU default).
"""

import jax
import jax.numpy as jnp

from cnn_jax.distributed import mesh as parallel

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


class SlotSteps:
  """The search's train step on the CPU: one member's step (`one_step`,
  sweep_steps.jit_steps for one member), compiled once, called for each
  active slot on that slot's row, which small jitted programs take out of
  the stacked arrays and put back (traced slot index: compiled once too).

  Same signature and results as the K-slot program, (states [K], alive [K],
  batch [K, B, ...], hparams [K], active bool [K] on the host) -> (states,
  alive, {'updated': [K]}), and each slot's step is the same computation.
  Why not one program: on XLA:CPU the K members unrolled in one program, or
  looped over inside it (lax.map, or a traced row index around the step),
  ran a member's step 1.5-2x slower than a program of one member's own
  arrays does (README, search section); and idle slots (halving's last
  trials) cost nothing here.

  For meshes whose 'members' axis is one device (usable(): the rows are
  whole on every device, the batch split along 'data' as before); every
  process calls the same programs, as `active` is the same in all of them.
  """

  def __init__(self, one_step, slots, on_members, on_batch, everywhere):
    take = lambda tree, k: jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, k, 1), tree)
    put = lambda tree, new, k: jax.tree.map(
        lambda x, n: jax.lax.dynamic_update_slice_in_dim(x, n, k, 0), tree,
        new)
    self.slots = slots
    self._step = one_step
    # Rows on the one-member step's shardings: no resharding, no recompile.
    self._take = jax.jit(take, out_shardings=(on_members, on_members,
                                              on_batch, on_members))
    self._put = jax.jit(put, out_shardings=on_members)
    self._replicated = jax.jit(lambda x: x, out_shardings=everywhere)

  @staticmethod
  def usable(vmap_width, slots, mesh):
    """Whether the search runs its slots this way: members one at a time
    (vmap_width 1, the CPU default), several slots, and no mesh axis that
    splits the members."""
    return vmap_width == 1 and slots > 1 and mesh.shape[parallel.MEMBERS] == 1

  def __call__(self, states, alive, batch, hparams, active):
    for k in range(self.slots):
      if active[k]:
        state, alive_k, batch_k, hparams_k = self._take(
            (states, alive, batch, hparams), k)
        new, alive_k, _ = self._step(state, alive_k, batch_k, hparams_k)
        states, alive = self._put((states, alive), (new, alive_k), k)
    # A slot's `updated` is its new `alive` (an idle slot's is False), read
    # by every process: replicated, as the K-slot program returns it.
    return states, alive, {"updated": self._replicated(alive)}
