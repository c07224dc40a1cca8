"""The members' train step as one program per member, for the CPU.

sweep_steps.make_train_step maps the step over the K stacked members in one
program (on the CPU, the members unrolled). SlotSteps instead compiles one
member's step once and calls it for each active slot on that slot's row,
which two small jitted programs take out of the stacked arrays and put back
(traced slot index: each is compiled once too). What that buys: idle slots
(a search's freed slots) cost nothing, and one member's program compiles
in a fraction of the K-member program's time. What it costs: with every
slot active, 0.87-0.88x the unrolled program's img/s on an idle 2-core AMD
EPYC Zen 5 (experiments/bench_sweep.py --vmap_width=auto,slots), so
fixed-member sweeps keep the unrolled program and searches use this
(README, search section). A traced row index inside one program was slower
still.

Same signature and results as the K-member program, (states [K], alive
[K], batch [K, B, ...], hparams [K], active bool [K] on the host, default
all) -> (states, alive, metrics {name: [K]}), and each member's step is the
same computation; an idle slot's metrics are zeros (its 'updated' False, as
its `alive`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.distributed import mesh as parallel


def usable(vmap_width, member_count, mesh):
  """Whether members can run this way: one member per vmap (vmap_width 1,
  the CPU default), several members, and no mesh axis that splits them (the
  rows are then whole on every device; the batch is split along 'data' as
  before, and every process calls the same programs)."""
  return (vmap_width == 1 and member_count > 1
          and mesh.shape[parallel.MEMBERS] == 1)


class SlotSteps:
  """The train step over K slots from `one_step`, the jitted step of one
  member (sweep_steps.jit_steps with member_count=1) on `mesh`."""

  def __init__(self, one_step, member_count, mesh, donate=False):
    on_members = parallel.member_sharding(mesh)
    take = lambda tree, k: jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, k, 1), tree)
    put = lambda tree, new, k: jax.tree.map(
        lambda x, n: jax.lax.dynamic_update_slice_in_dim(x, n, k, 0), tree,
        new)
    self.member_count = member_count
    self._step = one_step
    # Rows on the one-member step's shardings: no resharding, no recompile.
    self._take = jax.jit(take, out_shardings=(
        on_members, on_members, parallel.batch_sharding(mesh, stacked=True),
        on_members))
    # Metrics replicated, as the K-member program returns them: every
    # process reads them.
    self._everywhere = parallel.replicated(mesh)
    put_shardings = (on_members, on_members, self._everywhere)
    # A row written into a donated stacked array is written in place; into
    # one not donated, the whole K-member array is copied first. So only
    # the first put of a call may copy (when the caller keeps its states:
    # donate False), and each later one updates the copy in place (K
    # copies of the stacked state per step made the slots 1.7x slower).
    self._put_copy = jax.jit(put, out_shardings=put_shardings)
    self._put_in_place = jax.jit(put, out_shardings=put_shardings,
                                 donate_argnums=0)
    self._donate = donate
    self._blank = jax.jit(
        lambda metrics_k: jax.tree.map(
            lambda x: jnp.zeros((member_count,) + x.shape[1:], x.dtype),
            metrics_k), out_shardings=self._everywhere)

  def __call__(self, states, alive, batch, hparams, active=None):
    if active is None:
      active = np.ones(self.member_count, bool)
    metrics, owned = None, self._donate
    for k in range(self.member_count):
      if not active[k]:
        continue
      rows = self._take((states, alive, batch, hparams), k)
      new, alive_k, metrics_k = self._step(*rows)
      if metrics is None:
        metrics = self._blank(metrics_k)
      put = self._put_in_place if owned else self._put_copy
      states, alive, metrics = put((states, alive, metrics),
                                   (new, alive_k, metrics_k), k)
      owned = True
    if metrics is None:  # no active slot: nothing ran
      shapes = jax.eval_shape(
          self._step, *self._take((states, alive, batch, hparams), 0))[2]
      metrics = jax.device_put(jax.tree.map(
          lambda s: np.zeros((self.member_count,) + s.shape[1:], s.dtype),
          shapes), self._everywhere)
    return states, alive, metrics
