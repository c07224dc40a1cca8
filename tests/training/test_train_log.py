"""The training loop's metric windows (cnn_jax/training/train_log.py)."""

import jax
import ml_collections
import numpy as np
import pytest

from cnn_jax.training import optim
from cnn_jax.training import train_log


class _Writer:

  def __init__(self):
    self.rows = []

  def write(self, step, split, values):
    self.rows.append((step, split, values))


class _Bar:
  n = 0

  def set_postfix(self, **kwargs):
    self.postfix = kwargs

  def update(self, k):
    self.n += k


def test_log_steps_are_multiples_of_every_and_epoch_ends():
  assert train_log.log_steps(0, 1, 5, False) == []
  assert train_log.log_steps(4, 5, 5, False) == [5]
  assert train_log.log_steps(3, 12, 5, False) == [5, 10]  # one call, 9 steps
  assert train_log.log_steps(10, 12, 5, True) == [12]     # the epoch's end
  assert train_log.log_steps(8, 10, 5, True) == [10]      # not twice


def _call(losses):
  """One multi-step call's metrics: arrays with a leading step axis."""
  return {"loss": np.asarray(losses, np.float32),
          "accuracy": np.zeros(len(losses), np.float32)}


def test_a_call_across_a_log_step_splits_its_records_between_windows():
  writer, bar = _Writer(), _Bar()
  log = train_log.TrainLog(writer, bar, lambda step: 0.1 * step, 100, 4, [])
  log.add(_call([1.0, 2.0, 3.0]), 0, 3, 3 * 8, False)
  assert not writer.rows and len(log.pending) == 1
  log.add(_call([4.0, 5.0, 6.0]), 3, 6, 3 * 8, False)
  # Window 1-4 holds steps 1-4; steps 5 and 6 stay pending for the next.
  ((step, split, values),) = writer.rows
  assert (step, split) == (4, "train")
  assert values["loss"] == pytest.approx(2.5)
  assert values["learning_rate"] == pytest.approx(0.3)  # schedule(step - 1)
  assert values["epoch"] == pytest.approx(0.04)
  assert [float(r["loss"]) for r in log.pending] == [5.0, 6.0]
  assert bar.n == 6
  # The first window held the compilation: it is not in the timed total.
  assert log.train_img_per_s is None
  log.add(_call([7.0, 8.0]), 6, 8, 2 * 8, False)
  assert writer.rows[-1][0] == 8
  assert writer.rows[-1][2]["loss"] == pytest.approx(6.5)
  assert log.train_img_per_s > 0


def test_non_finite_loss_names_its_step():
  log = train_log.TrainLog(_Writer(), _Bar(), lambda step: 0.0, 10, 4, [])
  with pytest.raises(train_log.DivergedError, match="at step 3") as raised:
    log.add(_call([1.0, 2.0, np.nan, 4.0]), 0, 4, 32, False)
  assert raised.value.step == 3
  assert isinstance(raised.value, FloatingPointError)


def test_the_logged_learning_rate_is_the_schedule_and_compiles_once():
  # One-cycle AdamW as configs/mnist_fast.py: op by op, evaluating optax's
  # schedule on the host compiled ~20 tiny programs at the first log.
  config = ml_collections.ConfigDict({
      "schedule": "one_cycle", "learning_rate": 4e-3, "warmup_epochs": 0.6,
      "end_lr_factor": 0.0})
  schedule = optim.make_schedule(config, total_steps=40, steps_per_epoch=10)
  compiles = []

  def listener(event, seconds, **kwargs):
    del seconds, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  writer = _Writer()
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    log = train_log.TrainLog(writer, _Bar(), schedule, 10, 4, [])
    for start in range(0, 40, 2):
      log.add(_call([1.0, 1.0]), start, start + 2, 16, (start + 2) % 10 == 0)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  logged = {step: values["learning_rate"] for step, _, values in writer.rows}
  assert sorted(logged) == [4, 8, 10, 12, 16, 20, 24, 28, 30, 32, 36, 40]
  for step, rate in logged.items():
    # Fused or op by op: the same up to float32 rounding.
    assert rate == pytest.approx(float(schedule(step - 1)), rel=1e-4)
  assert rate < 0.01 * config.learning_rate  # annealed by the end
  assert len(compiles) == 1, compiles
