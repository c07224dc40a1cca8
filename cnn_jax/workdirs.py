"""The run folder: created if new; a finished run in it is never overwritten."""

import os


class WorkdirInUseError(RuntimeError):
  """The workdir holds another run's results."""


# Files whose presence means a run already wrote results here.
RESULT_FILES = ("summary.json", "metrics.jsonl", "checkpoints")


def prepare(workdir, config=None):
  """Creates `workdir`, refusing one that already holds a run's results."""
  del config  # Resuming an unfinished run with a matching config comes later.
  existing = [f for f in RESULT_FILES
              if os.path.exists(os.path.join(workdir, f))]
  if existing:
    raise WorkdirInUseError(
        f"workdir {workdir!r} already holds a run ({', '.join(existing)}); "
        "choose a new --workdir (results are never overwritten)")
  os.makedirs(workdir, exist_ok=True)
