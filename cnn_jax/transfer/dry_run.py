"""What transfer learning would do to a config's model, without training:
which variables init_from restores, and which are frozen, backbone, head
or unfrozen later (cnn_jax/transfer/plan.py's groups).

  python -m cnn_jax.transfer.dry_run --config configs/transfer_digits.py:fine_tune

A bad pattern, a missing source or a shape mismatch is the same error the
run would raise, before any compute.
"""

import functools
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from cnn_jax.training import steps
from cnn_jax.transfer import paths
from cnn_jax.transfer import plan as plan_lib
from cnn_jax.transfer import restore


def dry_run(config, example_shape):
  """The table of what each variable of `config`'s model becomes (restored
  or fresh; frozen, backbone, head, unfrozen), without computing anything
  but reading init_from. Raises ValueError for a bad pattern or shape."""
  transfer_config = config.get("transfer")
  if not plan_lib.is_active(transfer_config):
    return "config.transfer is absent or off: every variable trains"
  model = steps.create_model(config.model)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False),
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
      jnp.zeros((1, *example_shape)))
  variables = {c: variables.get(c, {}) for c in paths.COLLECTIONS}
  plan = plan_lib.Plan.from_config(transfer_config)
  plan.check(variables)
  restored = ()
  if transfer_config.init_from:
    _, restored = restore.restore_variables(
        plan, variables, restore.load_source(transfer_config.init_from),
        repr(transfer_config.init_from))
  return plan.describe(variables, restored)


def main(argv=None):
  """python -m cnn_jax.transfer.dry_run --config configs/transfer_digits.py:fine_tune

  Prints dry_run's table for a config (any --config.key=value override).
  """
  config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_list("example_shape", "28,28,1", "Input shape H,W,C.")
  flags.mark_flags_as_required(["config"])

  def run(_):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
    try:
      print(dry_run(flags.FLAGS.config,
                    tuple(int(s) for s in flags.FLAGS.example_shape)))
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    return 0

  app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
  main()
