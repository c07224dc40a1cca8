"""cnn_jax.checkpoint on small hand-made states: exact round trip, no pickle,
the save/keep policies, setting a step aside. Damaged checkpoints and never
saving NaN: tests/test_faults.py (on a real run's checkpoints)."""

import os
import pickle
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn_jax.runs import checkpoint
from cnn_jax.training.train_state import TrainState

def _state(step=0, scale=1.0):
  # The kernel is large enough (16 KiB) to be stored in a file of its own
  # (TensorStore inlines small arrays into its index).
  params = {"conv": {"kernel": scale * jnp.arange(4096.0).reshape(16, 16, 16),
                     "bias": jnp.full((16,), 0.5 * scale, jnp.bfloat16)}}
  tx = optax.adamw(1e-3)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    batch_stats={"bn": {"mean": jnp.ones(16)}},
                    opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(step), apply_fn=None, tx=tx)


def _options(**overrides):
  options = ml_collections.ConfigDict({
      "every_steps": 0, "every_seconds": 0.0, "keep": 10,
      "keep_best_metric": "", "async_save": False})
  options.update(overrides)
  return options


def _saved(workdir, steps, **options):
  manager = checkpoint.make_manager(workdir, _options(**options))
  for step in steps:
    checkpoint.save(manager, _state(step, scale=step), {"step": step})
  manager.wait_until_finished()
  manager.close()


def _restore_latest(workdir):
  manager = checkpoint.make_manager(workdir)
  try:
    return checkpoint.restore_latest(manager, jax.eval_shape(_state))
  finally:
    manager.close()


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_is_bitwise_exact(tmp_path, async_save):
  state = _state(7, scale=3.0)
  manager = checkpoint.make_manager(tmp_path, _options(async_save=async_save))
  checkpoint.save(manager, state, {"step": 7, "position": {"epoch": 1}})
  manager.wait_until_finished()
  restored, meta = checkpoint.restore(checkpoint.make_manager(tmp_path),
                                      jax.eval_shape(lambda: state), 7)
  chex.assert_trees_all_equal(restored, state)  # dtypes (bfloat16) included
  assert restored.tx is state.tx  # code comes from the template
  assert meta["position"] == {"epoch": 1} and len(meta["checksums"]) > 5
  assert checkpoint.saved_steps(tmp_path) == [7]


def test_restore_never_unpickles(tmp_path, monkeypatch):
  _saved(tmp_path, [1])

  def refuse(*args, **kwargs):
    raise AssertionError("a checkpoint was unpickled")

  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  state, _ = _restore_latest(tmp_path)
  assert int(state.step) == 1


def test_keeps_the_newest_and_the_best(tmp_path):
  manager = checkpoint.make_manager(
      tmp_path, _options(keep=2, keep_best_metric="accuracy"))
  accuracy = {2: 0.5, 4: 0.9, 6: 0.7}  # steps with an evaluation
  for step in range(1, 8):
    metrics = ({"accuracy": accuracy[step], "loss": 1.0}
               if step in accuracy else None)
    checkpoint.save(manager, _state(step), {"step": step}, metrics=metrics)
  manager.wait_until_finished()
  manager.close()
  assert checkpoint.saved_steps(tmp_path) == [4, 6, 7]


def test_save_policy_by_steps_and_by_seconds(tmp_path):
  by_steps = checkpoint.make_manager(tmp_path / "a", _options(every_steps=3))
  assert [s for s in range(1, 10) if by_steps.should_save(s)] == [3, 6, 9]
  never = checkpoint.make_manager(tmp_path / "b", _options())
  assert not any(never.should_save(s) for s in range(1, 10))
  by_time = checkpoint.make_manager(tmp_path / "c", _options(every_seconds=0.2))
  assert not by_time.should_save(1)
  time.sleep(0.25)
  assert by_time.should_save(2)


def test_bad_options_name_the_key(tmp_path):
  with pytest.raises(ValueError, match="config.checkpoint.keep=0"):
    checkpoint.make_manager(tmp_path, _options(keep=0))
  with pytest.raises(ValueError, match="keep_best_metric='acc'"):
    checkpoint.make_manager(tmp_path, _options(keep_best_metric="acc"))


def test_set_aside_renames_so_the_step_can_be_saved_again(tmp_path):
  _saved(tmp_path, [1, 2])
  checkpoint.set_aside(tmp_path, [2])
  assert checkpoint.saved_steps(tmp_path) == [1]
  assert os.path.isdir(os.path.join(checkpoint.checkpoint_dir(tmp_path),
                                    "2.damaged"))
  _saved(tmp_path, [2])
  assert checkpoint.saved_steps(tmp_path) == [1, 2]
  np.testing.assert_array_equal(_restore_latest(tmp_path)[0].step, 2)
