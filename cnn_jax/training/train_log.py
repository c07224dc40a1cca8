"""The training loop's metric windows: per-step records from the device,
averaged and written every config.train.log_every_steps (and at each epoch's
end), with the window's images/s.

Kept apart from train.py's loop because resuming depends on it bitwise: the
records of a window still open are saved in every checkpoint (`pending`),
so a resumed run writes the same windows as an uninterrupted one.
"""

import time

import jax
import numpy as np

from cnn_jax.training import multistep


class DivergedError(FloatingPointError):
  """A non-finite loss; `step` is the first step that produced one."""

  def __init__(self, step, loss):
    super().__init__(
        f"training diverged: non-finite loss ({loss}) at step {step}; lower "
        "config.optim.learning_rate or add config.optim.grad_clip_norm")
    self.step = step


def check_finite(records, first_step):
  """Raises DivergedError naming the first record (step first_step + 1,
  ...) with a non-finite loss."""
  for offset, record in enumerate(records):
    if not np.isfinite(record["loss"]):
      raise DivergedError(first_step + offset + 1, record["loss"])


def log_steps(previous, step, every, epoch_done):
  """The steps in (previous, step] that end a log window: the multiples of
  `every`, and `step` itself when it ends an epoch."""
  first = (previous // every + 1) * every
  steps = list(range(first, step + 1, every))
  if epoch_done and step not in steps:
    steps.append(step)
  return steps


class TrainLog:
  """Collects each jitted call's metrics and writes the windows they close.

  Args:
    writer: a writers.MetricWriter.
    bar: the progress bar (tqdm-like: set_postfix, update, n).
    schedule: step -> learning rate, logged with each window.
    steps_per_epoch: for the logged epoch.
    every: config.train.log_every_steps.
    pending: the records of the window still open (from a checkpoint when
      resuming; float32 values).
  """

  def __init__(self, writer, bar, schedule, steps_per_epoch, every,
               pending):
    self.writer, self.bar = writer, bar
    # One compiled program: called op by op, an optax schedule compiled ~30
    # tiny programs at the first log (one_cycle: ~1.3 s of a cold start).
    self.schedule = jax.jit(schedule)
    self.steps_per_epoch, self.every = steps_per_epoch, every
    self.pending = pending
    self.window_start, self.window_images = time.time(), 0
    self.train_seconds, self.train_images = 0.0, 0
    self.first_window = True  # it holds the compilation: not timed

  def add(self, call_metrics, previous, step, images, epoch_done):
    """A call that ran steps (previous, step] over `images` images."""
    self.pending.append(call_metrics)
    self.window_images += images
    ends = log_steps(previous, step, self.every, epoch_done)
    if not ends:
      return
    records = multistep.host_records(self.pending)
    # Timed per call (its steps finish together): a window that ends inside
    # a call is timed up to the end of that call.
    elapsed = time.time() - self.window_start
    throughput = self.window_images / max(elapsed, 1e-9)
    if not self.first_window:
      self.train_seconds += elapsed
      self.train_images += self.window_images
    for end in ends:
      window = records[:len(records) - (step - end)]
      records = records[len(window):]
      check_finite(window, end - len(window))
      summary = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
      summary.update(learning_rate=float(self.schedule(end - 1)),
                     img_per_s=throughput, epoch=end / self.steps_per_epoch)
      self.writer.write(end, "train", summary)
    self.bar.set_postfix(epoch=f"{step / self.steps_per_epoch:.2f}",
                         loss=f"{summary['loss']:.4f}",
                         img_s=f"{throughput:.0f}")
    self.bar.update(step - self.bar.n)
    # The steps of this call after its last log step open the next window.
    self.pending, self.first_window = records, False
    self.restart_clock()

  def restart_clock(self):
    """Starts the window's clock again (time spent since, e.g. evaluating,
    is not training time)."""
    self.window_start, self.window_images = time.time(), 0

  def pause(self):
    """Excludes the time since the last call (an evaluation) from the
    window's clock, keeping its images."""
    self.window_start = time.time()

  @property
  def train_img_per_s(self):
    """Training images/s over the timed windows (None before the first)."""
    return (self.train_images / self.train_seconds if self.train_seconds
            else None)
