"""A checkpoint save policy by wall-clock time (config.checkpoint.every_seconds)
for the Orbax CheckpointManager that runs/checkpoint.py builds: an object
with Orbax's `should_save(step, previous_steps, *, context)` (duck-typed:
no Orbax import here)."""

import datetime


class EverySeconds:
  """Orbax save policy: once `seconds` have passed since this process's last
  save (or its start), and never while an async save is still being written
  (waiting for it would block training)."""

  def __init__(self, seconds):
    self.seconds = seconds
    self._since = datetime.datetime.now(datetime.timezone.utc)

  def should_save(self, step, previous_steps, *, context):
    if context.is_saving_in_progress:
      return False
    last = max([self._since] + [info.time for info in previous_steps[-1:]])
    return step.time - last >= datetime.timedelta(seconds=self.seconds)
