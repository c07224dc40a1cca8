"""Sweeps: member configs, member k == its single run, isolation of a
diverging member, and the sweep's outputs (per-member checkpoints restore as
single runs)."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.sweeps import sweep
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import steps
from cnn_jax.training import train
from configs import mnist_sweep as mnist_sweep_config


def _axes(**nested):
  return ml_collections.ConfigDict(nested)


def _sweep_config(data_dir=None, mode="grid", **axes):
  """configs/mnist_sweep.py shrunk (small CNN, batch 16), with these axes."""
  config = mnist_sweep_config.get_config()
  config.model.features = (8, 16)
  config.model.hidden = 32
  config.optim.name = "momentum"
  config.optim.schedule = "constant"
  config.data.batch_size = 16
  config.data.eval_batch_size = 64  # 100 test images: last batch padded
  if data_dir is not None:
    config.data.data_dir = str(data_dir)
  config.sweep.axes = _axes(**axes)
  config.sweep.mode = mode
  return config


def test_grid_and_zip_members():
  config = _sweep_config(seed=(0, 1), optim={"learning_rate": (0.1, 0.3, 1)})
  overrides, configs = sweep_config.member_configs(config)
  assert len(configs) == 6
  assert overrides[1] == {"optim.learning_rate": 0.1, "seed": 1}
  assert overrides[5] == {"optim.learning_rate": 1.0, "seed": 1}
  assert isinstance(configs[5].optim.learning_rate, float)
  assert "sweep" not in configs[0]  # each member is a plain single-run config
  assert configs[3].seed == 1 and configs[3].optim.learning_rate == 0.3
  config.sweep.mode = "zip"
  with pytest.raises(ValueError, match="equal length"):
    sweep_config.member_configs(config)
  config.sweep.axes.seed = (0, 1, 2)
  _, configs = sweep_config.member_configs(config)
  assert [(c.seed, c.optim.learning_rate) for c in configs] == [
      (0, 0.1), (1, 0.3), (2, 1.0)]
  # The shipped config builds and is a sweep of 3 x 2.
  _, shipped = sweep_config.member_configs(mnist_sweep_config.get_config())
  assert len(shipped) == 6


@pytest.mark.parametrize("axes, message", [
    ({"optim": {"learnig_rate": (0.1,)}}, "does not have: optim.learnig_rate"),
    ({"model": {"features": ((8,), (16,))}}, "model.features cannot differ"),
    ({"data": {"batch_size": (16, 32)}}, "data.batch_size cannot differ"),
    ({"optim": {"b1": (0.8, 0.9)}}, "optim.b1 has no effect"),
    ({"seed": 3}, "seed must be a non-empty tuple"),
    ({"seed": (0.5,)}, "seed: value 0.5 is not of the type"),
    ({"model": {"dropout_rate": (0.2, 1.0)}}, r"\[1.0\] not in \[0, 1\)"),
])
def test_invalid_axes_are_errors_naming_them(axes, message):
  with pytest.raises(ValueError, match=message):
    sweep_config.member_configs(_sweep_config(**axes))


def test_unknown_mode_and_option_are_errors():
  config = _sweep_config(seed=(0, 1))
  config.sweep.mode = "random"
  with pytest.raises(ValueError, match="config.sweep.mode='random'"):
    sweep_config.member_configs(config)
  config = _sweep_config(seed=(0, 1))
  config.sweep.chunks = 2
  with pytest.raises(ValueError, match="unknown keys: chunks"):
    sweep_config.member_configs(config)


def _data(config):
  splits = load_splits(config.data)
  train_set = splits["train"]
  mean, std = steps.normalization_stats(config.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  return train_set, mean, std, per_epoch


def _three_members(data_dir, learning_rates):
  """Members 0 and 1 differ in seed and learning rate; member 2 also in
  dropout, label smoothing, crop augmentation, momentum and weight decay."""
  return sweep_config.member_configs(_sweep_config(
      data_dir, mode="zip", seed=(0, 1, 2),
      optim={"learning_rate": learning_rates, "momentum": (0.9, 0.9, 0.8),
             "weight_decay": (1e-4, 1e-4, 0.0)},
      model={"dropout_rate": (0.0, 0.0, 0.3)},
      train={"label_smoothing": (0.0, 0.0, 0.1)},
      data={"augment": {"crop_padding": (0, 0, 2)}}))[1]


# The tests below run one compiled sweep program: their members differ only
# in values the program takes as arrays (and the tiny data is the same).
_COMPILED = {}


def _run_sweep(configs, num_steps):
  """`num_steps` sweep steps from init -> (states, alive, last metrics)."""
  train_set, mean, std, per_epoch = _data(configs[0])
  if not _COMPILED:
    program = sweep_steps.shared_program(configs[0], per_epoch)
    _COMPILED["program"] = program
    _COMPILED["step"] = jax.jit(sweep_steps.make_train_step(
        program.model, sweep_steps.distinct_augmentations(configs), mean=mean,
        std=std, member_count=len(configs), vary_dropout=True))
  states, _ = sweep_steps.init_members(configs, train_set.example_shape,
                                       per_epoch, _COMPILED["program"])
  hparams = sweep_steps.hyperparameter_arrays(
      configs, sweep_steps.distinct_augmentations(configs))
  alive = jnp.ones(len(configs), bool)
  batches = sweep._member_batches(  # pylint: disable=protected-access
      train_set, configs[0].data.batch_size, [c.seed for c in configs])
  for _ in range(num_steps):
    _, batch = next(batches)
    states, alive, metrics = _COMPILED["step"](states, alive, batch, hparams)
  return states, alive, metrics


def test_each_member_equals_its_single_run(tiny_mnist_dir):
  configs = _three_members(tiny_mnist_dir, (0.01, 0.02, 0.03))
  train_set, mean, std, per_epoch = _data(configs[0])
  num_steps = 20
  states, alive, _ = _run_sweep(configs, num_steps)
  assert bool(jnp.all(alive))
  single_steps = {}
  for k, member in enumerate(configs):
    state, _ = steps.create_train_state(
        member, jax.random.PRNGKey(member.seed), train_set.example_shape,
        per_epoch)
    statics = (json.dumps(member.data.augment.to_dict()),
               member.train.label_smoothing, member.model.dropout_rate)
    if statics not in single_steps:  # members 0 and 1 share one compile
      single_steps[statics] = jax.jit(functools.partial(
          steps.train_step, mean=mean, std=std,
          augment_config=member.data.augment.to_dict(),
          label_smoothing=member.train.label_smoothing))
    batches = batching.train_batches(train_set, member.data.batch_size,
                                     member.seed)
    for _ in range(num_steps):
      _, batch = next(batches)
      state, _ = single_steps[statics](state, batch)
    got = sweep_steps.member_state(states, k)
    assert int(got.step) == num_steps
    # atol: parameters near 0 (vmapped matmuls sum in another order).
    chex.assert_trees_all_close(got.params, state.params, rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(got.opt_state.hyperparams,
                                state.opt_state.hyperparams)


def test_a_diverging_member_does_not_change_the_others(tiny_mnist_dir):
  # Member 1 blows up (learning rate 1e9); in the calm sweep it does not.
  diverged, alive, metrics = _run_sweep(
      _three_members(tiny_mnist_dir, (0.01, 1e9, 0.03)), num_steps=8)
  assert alive.tolist() == [True, False, True]
  assert not bool(metrics["updated"][1])
  blown = sweep_steps.member_state(diverged, 1)
  chex.assert_tree_all_finite(blown.params)
  assert int(blown.step) < 8  # frozen when it blew
  calm, alive, _ = _run_sweep(
      _three_members(tiny_mnist_dir, (0.01, 0.02, 0.03)), num_steps=8)
  assert bool(jnp.all(alive))
  for k in (0, 2):
    chex.assert_trees_all_equal(sweep_steps.member_state(diverged, k).params,
                                sweep_steps.member_state(calm, k).params)


def test_sweep_run_writes_members_that_restore_as_single_runs(
    tiny_mnist_dir, tmp_path):
  config = _sweep_config(tiny_mnist_dir,
                         optim={"learning_rate": (0.05, 0.1, 1e9)})
  config.data.batch_size = 64  # 4 steps per epoch
  config.train.num_epochs = 1
  config.sweep.chunk = 2  # members 0-1, then 2 and a masked-out pad
  workdir = str(tmp_path / "sweep")
  summary = sweep.train_and_evaluate(config, workdir)
  assert summary["members"] == 3 and summary["chunk"] == 2
  ranking = summary["ranking"]  # member 2 (lr 1e9) diverges: ranked last
  assert [r["status"] for r in ranking] == ["finished", "finished",
                                            "diverged"]
  assert ranking[-1]["member"] == 2 and summary["diverged"] == [2]
  assert ranking[0]["test_accuracy"] >= ranking[1]["test_accuracy"]
  with open(os.path.join(workdir, "summary.md")) as f:
    assert "| rank | member | optim.learning_rate |" in f.read()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert {r["member"] for r in records} == {0, 1, 2}
  assert [r["member"] for r in records if r["split"] == "diverged"] == [2]
  for k in range(3):
    member_dir = os.path.join(workdir, "members", str(k))
    assert os.listdir(os.path.join(member_dir, "tensorboard"))
    with open(os.path.join(member_dir, "summary.json")) as f:
      member_summary = json.load(f)
    assert "sweep" not in member_summary["config"]
    assert member_summary["sweep"]["member"] == k
  # A member's checkpoint is an ordinary run's: evaluate it as launch.py's
  # --mode=evaluate does, with the member's config resolved from the sweep.
  best = ranking[0]
  member_dir = os.path.join(workdir, "members", str(best["member"]))
  member = sweep_config.config_for_workdir(config, member_dir)
  assert member.optim.learning_rate == best["overrides"]["optim.learning_rate"]
  results, _ = train.evaluate_checkpoint(member, member_dir)
  assert results["step"] == 4
  assert results["test_accuracy"] == best["test_accuracy"]
  assert results["test_loss"] == pytest.approx(best["test_loss"], rel=1e-5)
  with pytest.raises(ValueError, match="not a sweep member's folder"):
    sweep_config.config_for_workdir(config, workdir)
  with pytest.raises(train.workdirs.WorkdirInUseError, match="already holds"):
    sweep.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("impl, width, backend, expected", [
    ("auto", 0, "gpu", "im2col"),    # one vmap on an accelerator: im2col
    ("auto", 4, "tpu", "im2col"),
    ("auto", 1, "gpu", None),        # unrolled members: as single runs
    ("auto", 0, "cpu", None),
    ("xla", 0, "gpu", "xla"),        # an explicit choice is kept
    ("mixed", 1, "cpu", "mixed"),
])
def test_sweep_conv_impl_resolution(impl, width, backend, expected):
  config = ml_collections.ConfigDict({"conv_impl": impl})
  assert sweep_steps.resolve_conv_impl(config, width, 8, backend) == expected


def test_unknown_sweep_conv_impl_is_an_error_naming_the_key():
  config = ml_collections.ConfigDict({"conv_impl": "fft"})
  with pytest.raises(ValueError, match=r"config\.sweep\.conv_impl='fft'"):
    sweep_steps.resolve_conv_impl(config, 0, 8, "gpu")


def test_sweep_step_is_traced_with_its_conv_impl(tiny_mnist_dir):
  """conv_impl='im2col' replaces every convolution of the vmapped step by
  matrix multiplies, gives the same update, and leaves the process default
  alone afterwards."""
  from cnn_jax.conv import conv_impls  # pylint: disable=g-import-not-at-top
  configs = _three_members(tiny_mnist_dir, (0.01, 0.02, 0.03))
  train_set, mean, std, per_epoch = _data(configs[0])
  program = sweep_steps.shared_program(configs[0], per_epoch)
  augments = sweep_steps.distinct_augmentations(configs)
  states, _ = sweep_steps.init_members(configs, train_set.example_shape,
                                       per_epoch, program)
  hparams = sweep_steps.hyperparameter_arrays(configs, augments)
  alive = jnp.ones(len(configs), bool)
  _, batch = next(sweep._member_batches(  # pylint: disable=protected-access
      train_set, configs[0].data.batch_size, [c.seed for c in configs]))
  default = conv_impls.default_conv_impl()
  results = {}
  for impl in ("xla", "im2col"):
    step = sweep_steps.make_train_step(
        program.model, augments, mean=mean, std=std,
        member_count=len(configs), vary_dropout=True, vmap_width=0,
        conv_impl=impl)
    jaxpr = str(jax.make_jaxpr(step)(states, alive, batch, hparams))
    assert ("conv_general_dilated" in jaxpr) == (impl == "xla"), impl
    assert conv_impls.default_conv_impl() == default  # the scope was left
    results[impl] = jax.jit(step)(states, alive, batch, hparams)[0].params
  chex.assert_trees_all_close(results["im2col"], results["xla"], rtol=1e-4,
                              atol=1e-6)
