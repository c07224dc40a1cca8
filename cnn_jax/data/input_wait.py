"""Is the input pipeline the bottleneck? Time spent waiting for batches
against the time of the whole loop, per window of batches.

The training loop draws each batch from the device prefetch; when the input
keeps up, the batch is already there and the wait is ~0 (the loop's time
goes to dispatching and waiting for the device). When it does not, the loop
waits in next(): `monitored` reports the fraction of each window's time
spent there, once it exceeds `threshold`.
"""

import time


def monitored(iterator, every, report, threshold=0.25, hint=""):
  """Yields the items of `iterator`, timing each wait for the next one.

  Args:
    iterator: e.g. prefetch.prefetch_to_device(...).
    every: items per window (e.g. the loop's calls per log window).
    report: called with one line when a window waited more than
      `threshold` of its time; the first window (compilation) is not judged.
    threshold: fraction of a window's time.
    hint: appended to the line (which knobs to turn).
  Closing this generator closes `iterator`.
  """
  every = max(1, int(every))
  waited, count, window = 0.0, 0, 0
  start = time.perf_counter()
  try:
    while True:
      before = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        return
      waited += time.perf_counter() - before
      count += 1
      if count == every:
        elapsed = time.perf_counter() - start
        if window > 0 and elapsed > 0 and waited / elapsed > threshold:
          report(f"input pipeline is the bottleneck: {waited / elapsed:.0%} "
                 f"of the last {count} steps' time ({elapsed:.1f} s) was "
                 f"spent waiting for batches{hint}")
        waited, count, window = 0.0, 0, window + 1
        start = time.perf_counter()
      yield item
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
