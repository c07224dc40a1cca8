"""Quiet the reads Orbax abandons when a damaged checkpoint fails to restore.

checkpoint.restore (and restore_variables) turn a damaged checkpoint into
one CheckpointError naming the step; launch.py prints it as one line. But
Orbax reads a checkpoint's arrays concurrently, and when one fails it gives
up on the rest, which then report themselves later, from other threads,
possibly mid-way through that line. `quiet` logs them at debug level.
"""

import logging as python_logging
import os
import sys
import traceback
import warnings

from absl import logging

# The checkpoint folders restore() has read arrays from: an error that
# names one of them, reported after Orbax abandoned the read, is noise.
_READ_FROM = set()


def _late_callback(unraisable) -> bool:
  """Whether `unraisable` is a TensorStore read finishing after Orbax closed
  the event loop that was waiting for it (call_soon_threadsafe on a closed
  loop, reported from TensorStore's own thread, with no object)."""
  frames = [f.name for f in traceback.extract_tb(unraisable.exc_traceback)]
  return (unraisable.object is None
          and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"
          and "call_soon_threadsafe" in frames)


class _NeverRetrievedReads(python_logging.Filter):
  """Drops asyncio's "Task/Future exception was never retrieved" records
  whose error names a checkpoint folder restore() read from: the reads
  Orbax abandoned when another array of that checkpoint failed."""

  def filter(self, record):
    message = record.getMessage()
    if "exception was never retrieved" not in message:
      return True
    if record.exc_info and record.exc_info[1] is not None:
      message += str(record.exc_info[1])
    if any(folder in message for folder in _READ_FROM):
      logging.debug("abandoned checkpoint read: %s", message[:200])
      return False
    return True


def quiet(directory):
  """When one array of a damaged checkpoint fails to read, Orbax gives up on
  the reads of the others and closes its event loop. Each of those then
  reports its own traceback at some later moment: coroutines as they are
  garbage-collected ("Exception ignored in ..."), TensorStore reads still in
  flight as they finish ("RuntimeError: Event loop is closed", from
  TensorStore's thread), failed tasks and futures through asyncio's logger
  ("Task exception was never retrieved"), and metadata coroutines never
  awaited (a RuntimeWarning): tens of tracebacks for the one
  error CheckpointError already names, possibly mid-way through launch.py's
  error line as the process ends. All are logged at debug level instead;
  any other unraisable error or asyncio record still goes where it went.
  Called before a restore reads arrays from `directory`; installs the hook
  and the filter for good (once; again if something replaced them).
  """
  for folder in (str(directory), os.path.realpath(str(directory))):
    _READ_FROM.add(folder)
  # Orbax's array-metadata reads it abandoned, warned of wherever they are
  # collected (so no module= here).
  warnings.filterwarnings(
      "ignore", message=r"coroutine 'Store\._get_array_metadatas' was never "
      "awaited", category=RuntimeWarning)
  asyncio_logger = python_logging.getLogger("asyncio")
  if not any(isinstance(f, _NeverRetrievedReads)
             for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_NeverRetrievedReads())
  if getattr(sys.unraisablehook, "quiets_abandoned_reads", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    coroutine = getattr(unraisable.object, "__qualname__", "")
    if "_read_array_index_and_device_put" in coroutine:
      logging.debug("abandoned checkpoint read: %s", unraisable.exc_value)
    elif _late_callback(unraisable):
      logging.debug("checkpoint read finished after its loop closed")
    else:
      previous(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook
