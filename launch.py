"""Entry point: flags -> config -> train_and_evaluate.

  python launch.py --config configs/mnist.py --workdir runs/mnist \
      --config.optim.learning_rate=0.001 --config.train.num_epochs=2
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cnn_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for logs, checkpoints, results.")
flags.DEFINE_enum("mode", "train", ["train"], "What to do with the config.")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override keys with --config.a.b=v.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can cause and fix: reported as one line, without a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError,
                train.workdirs.WorkdirInUseError)


def parse_flags(argv):
  """absl's flag parsing, with a misspelt --config.key reported in one line.

  (ml_collections raises AttributeError/KeyError with a traceback for a key
  the locked config does not have.)
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    hint = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"error: unknown config key among {', '.join(bad)}: {hint}",
          file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Orbax and JAX log every checkpoint step at INFO; keep the console for
  # our progress lines (--verbosity=0 brings them back).
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except _USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"test accuracy {summary['test_accuracy']:.4f}, "
        f"test loss {summary['test_loss']:.4f}, {summary['steps']} steps, "
        f"{summary['wall_seconds']:.0f} s; results in {FLAGS.workdir}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
