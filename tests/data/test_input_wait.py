"""data/input_wait.py: a loop that waits for its batches is reported, one
whose batches are ready is not; closing reaches the source."""

import time

from cnn_jax.data import input_wait


def _source(delay, count, closed):
  try:
    for i in range(count):
      time.sleep(delay)
      yield i
  finally:
    closed.append(True)


def _consume(source_delay, step_delay, count=9):
  lines, closed = [], []
  items = []
  for item in input_wait.monitored(_source(source_delay, count, closed),
                                   every=3, report=lines.append):
    time.sleep(step_delay)
    items.append(item)
  return items, lines, closed


def test_waiting_for_batches_is_reported_after_the_first_window():
  items, lines, closed = _consume(source_delay=0.03, step_delay=0.0)
  assert items == list(range(9)) and closed == [True]
  assert len(lines) == 2  # windows 2 and 3; the first holds compilation
  assert "input pipeline is the bottleneck" in lines[0]


def test_ready_batches_are_not_reported():
  _, lines, _ = _consume(source_delay=0.0, step_delay=0.03)
  assert not lines


def test_closing_closes_the_source():
  closed = []
  monitored = input_wait.monitored(_source(0.0, 100, closed), 3, print)
  next(monitored)
  monitored.close()
  assert closed == [True]
