"""Training through the Grain pipeline (config.data.pipeline='grain'): the
tiny run's batches equal the in-memory iterator's, so its params are
bitwise those of the in-memory run, also when stopped mid-epoch and resumed
from the Grain iterator state saved in the checkpoint."""

import pytest

from cnn_jax.runs import checkpoint
from cnn_jax.training import preemption
from cnn_jax.training import steps
from cnn_jax.training import train
from tests import tiny_run

pytestmark = pytest.mark.usefixtures("launch_env")

GRAIN = {"data.pipeline": "grain", "data.workers": 0}


def _meta(workdir, step, run_config):
  abstract = steps.abstract_train_state(run_config, (28, 28, 1),
                                        tiny_run.STEPS_PER_EPOCH)
  manager = checkpoint.make_manager(workdir)
  try:
    return checkpoint.restore(manager, abstract, step)[1]
  finally:
    manager.close()


def test_grain_run_stopped_and_resumed_equals_the_in_memory_run(
    tiny_run_data, uninterrupted, tmp_path):
  workdir = tmp_path / "grain"
  stopping = tiny_run.config(tiny_run_data,
                             {**GRAIN, "train.stop_after_steps": 5})
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(stopping, str(workdir))
  position = _meta(workdir, 5, stopping)["position"]
  assert (position["epoch"], position["batch"]) == (0, 5)
  assert position["state"]["pipeline"] == "grain"
  assert position["state"]["iterator"] == {"next_index": 5}
  # Resumed with another worker count: the same batches (from the position).
  resumed = tiny_run.config(tiny_run_data, {**GRAIN, "data.workers": 1})
  train.train_and_evaluate(resumed, str(workdir))
  tiny_run.assert_same_run(workdir, uninterrupted, resumed)
