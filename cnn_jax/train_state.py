"""The training state: everything a step reads and writes, as one pytree."""

from typing import Any

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  """step: int32 scalar; rng: PRNG key for dropout/augmentation.

  `apply_fn` and `tx` are static (not pytree leaves), so the state can be
  jitted, donated, vmapped over sweep members and checkpointed as is.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array
  apply_fn: Any = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def apply_gradients(self, grads, batch_stats):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
