"""Several training steps per jitted call: `jax.lax.scan` over stacked batches.

With config.train.steps_per_call = N > 1, the host stacks N consecutive
batches into one [N, B, ...] batch and one compiled call runs the N steps on
device, so the Python loop (dispatch, prefetch hand-off, bookkeeping) runs
once per N steps instead of once per step.

Groups never cross an epoch boundary: group k of an epoch holds its batches
kN .. min((k+1)N, steps_per_epoch) - 1. Which steps share a call is thus a
function of the step alone, so a run resumed from a checkpoint (always saved
between calls) makes the same calls as an uninterrupted one.
"""

import jax
import numpy as np


def steps_per_call(train_config):
  """config.train.steps_per_call (1 when absent), checked: an int >= 1."""
  value = train_config.get("steps_per_call", 1)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"config.train.steps_per_call={value!r} must be an "
                     "integer >= 1 (1: one step per jitted call)")
  return value


def make_multi_step(step_fn, unroll=1):
  """(state, batches) -> (state, metrics): step_fn applied to each batch.

  Args:
    step_fn: (state, batch) -> (state, metrics), one training step.
    unroll: jax.lax.scan's: steps per loop iteration; True: no loop, one
      program with N copies of the step (compile time grows with N).
  Returns:
    A function whose `batches` is a pytree of [N, ...] arrays (N batches
    stacked along a new leading axis) and whose `metrics` are step_fn's
    metrics stacked the same way ([N] for scalar metrics). N is read from
    the leading axis, so each distinct N compiles once. Not jitted: wrap it
    in jax.jit(..., donate_argnums=0).
  """

  def multi_step(state, batches):
    return jax.lax.scan(step_fn, state, batches, unroll=unroll)

  return multi_step


def group_batches(batches, steps):
  """Stacks consecutive (position_after, batch) items into calls.

  Args:
    batches: yields (IteratorPosition after the batch, batch of numpy
      arrays), as batching.train_batches does.
    steps: the most batches per group (N).
  Yields:
    (position after the group's last batch, the group's batches stacked
    along a new leading axis: [n, B, ...] with 1 <= n <= N). A group ends
    after every N-th batch of an epoch and at the end of the epoch, so the
    last group of an epoch is shorter when N does not divide it.
  """
  group = []
  for position, batch in batches:
    group.append(batch)
    if position.batch % steps == 0:  # batch 0 of the next epoch included
      yield position, jax.tree.map(lambda *xs: np.stack(xs), *group)
      group = []


def host_records(pending):
  """Per-step metric records on the host, oldest first.

  Args:
    pending: a list whose items are one step's metrics (a dict of scalars)
      or one call's (a dict of [n] arrays, from make_multi_step), on device
      or host.
  Returns:
    A list with one dict of numpy scalars per step.
  """
  records = []
  for item in jax.device_get(pending):
    steps = np.shape(next(iter(item.values())))
    if not steps:
      records.append(item)
    else:
      records.extend({k: v[i] for k, v in item.items()}
                     for i in range(steps[0]))
  return records
