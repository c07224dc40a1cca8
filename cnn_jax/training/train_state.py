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

  def apply_gradients(self, grads, batch_stats, **extra_args):
    """One optimizer update. `extra_args` (train_step passes value=loss)
    reach the transformations that take them, e.g.
    optax.contrib.reduce_on_plateau; the others ignore them."""
    tx = optax.with_extra_args_support(self.tx)
    updates, opt_state = tx.update(grads, self.opt_state, self.params,
                                   **extra_args)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
