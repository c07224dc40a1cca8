"""Stopping cleanly on SIGTERM/SIGINT (preemption, Ctrl-C).

While a `StopRequest` is active, the first SIGTERM or SIGINT is only recorded;
the training loop checks it between steps, saves a checkpoint and raises
`Preempted`. The handlers are then put back, so a second signal acts as
usual (a user can still interrupt a save that hangs).
"""

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint.

  `exit_code` is the shell convention for death by that signal, 128 + signum
  (143 for SIGTERM, 130 for SIGINT), so schedulers see the run as stopped,
  not finished.
  """

  def __init__(self, signum, step, workdir):
    self.signum = signum
    self.step = step
    self.exit_code = 128 + signum
    super().__init__(
        f"stopped by {signal.Signals(signum).name} after step {step}; "
        f"checkpoint saved in {workdir}; rerun the same command to resume")


class StopRequest:
  """Context manager: records the first SIGTERM/SIGINT in `signum`.

  Signal handlers can only be installed from the main thread; elsewhere the
  signals keep their usual effect and only `request` sets `signum`.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    self._restore_handlers()

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    self._restore_handlers()

  def _restore_handlers(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def request(self, signum=signal.SIGTERM):
    """Stops as if `signum` had arrived: through the OS (so the real handler
    runs) when it is installed, else directly."""
    if signum in self._previous:
      signal.raise_signal(signum)  # runs _handle before returning
    else:
      self.signum = signum
