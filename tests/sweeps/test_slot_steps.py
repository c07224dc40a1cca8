"""slot_steps.SlotSteps: one member's program per slot computes what the
K-member program computes, and skips idle slots."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.distributed import mesh as parallel
from cnn_jax.sweeps import slot_steps
from cnn_jax.sweeps import sweep
from cnn_jax.sweeps import sweep_steps
from tests.sweeps import test_sweep


def test_slot_steps_equal_the_k_member_program_and_skip_idle_slots(
    tiny_mnist_dir):
  # Members differ in seed, learning rate, momentum, weight decay, dropout,
  # label smoothing and augmentation: every per-member input of the step.
  configs = test_sweep._three_members(tiny_mnist_dir, (0.01, 0.02, 0.03))  # pylint: disable=protected-access
  train_set, mean, std, per_epoch = test_sweep._data(configs[0])  # pylint: disable=protected-access
  program = sweep_steps.shared_program(configs[0], per_epoch)
  augments = sweep_steps.distinct_augmentations(configs)
  jitted = lambda per_slot: sweep_steps.jit_steps(
      program, augments, mean=mean, std=std, member_count=3,
      vary_dropout=True, vmap_width=1, conv_impl=None,
      mesh=parallel.make_mesh(1, jax.devices()[:1]), donate=False,
      per_slot=per_slot)[0]
  whole, per_slot = jitted(False), jitted(True)
  assert isinstance(per_slot, slot_steps.SlotSteps)
  initial, _ = sweep_steps.init_members(configs, train_set.example_shape,
                                        per_epoch, program)
  hparams = sweep_steps.hyperparameter_arrays(configs, augments)
  active = np.array([True, False, True])  # slot 1 idle (not alive either)
  batches = sweep._member_batches(  # pylint: disable=protected-access
      train_set, configs[0].data.batch_size, [c.seed for c in configs])
  batches = [next(batches)[1] for _ in range(3)]
  results = {}
  for name, step in (("whole", whole), ("per_slot", per_slot)):
    states, alive = initial, jnp.asarray(active)
    for batch in batches:
      states, alive, metrics = step(states, alive, batch, hparams, active)
    results[name] = jax.device_get((states, alive, metrics))
  (w_states, w_alive, w_metrics), (s_states, s_alive, s_metrics) = (
      results["whole"], results["per_slot"])
  chex.assert_trees_all_close(s_states, w_states, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(s_alive, active)
  np.testing.assert_array_equal(w_alive, active)
  assert set(s_metrics) == set(w_metrics)
  for name in s_metrics:
    np.testing.assert_allclose(s_metrics[name][active],
                               w_metrics[name][active], rtol=1e-6,
                               err_msg=name)
    assert not np.any(s_metrics[name][1]), name  # an idle slot's: zeros
  # The idle slot's state is untouched; the others trained.
  idle = lambda tree: jax.tree.map(lambda x: x[1], tree)
  chex.assert_trees_all_equal(idle(s_states.params), idle(initial.params))
  assert np.asarray(s_states.step).tolist() == [3, 0, 3]
  # No slot active: nothing runs, the metrics are zeros of the same shapes.
  states, alive, metrics = per_slot(s_states, jnp.asarray(active), batches[0],
                                    hparams, np.zeros(3, bool))
  chex.assert_trees_all_equal(jax.device_get(states), s_states)
  np.testing.assert_array_equal(alive, active)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.device_get(metrics), s_metrics)
  assert not any(np.any(v) for v in jax.device_get(metrics).values())


def test_slot_steps_only_where_members_run_one_at_a_time():
  mesh = lambda members: types.SimpleNamespace(
      shape={parallel.MEMBERS: members, parallel.DATA: 1})
  assert slot_steps.usable(1, 4, mesh(1))
  assert not slot_steps.usable(4, 4, mesh(1))  # a vmap (GPU/TPU default)
  assert not slot_steps.usable(1, 1, mesh(1))  # one member: one program
  assert not slot_steps.usable(1, 4, mesh(2))  # members split over devices
