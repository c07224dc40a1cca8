"""cnn_jax.transfer: frozen means bitwise unchanged (BatchNorm included),
per-group learning rates, scheduled unfreezing, partial restore, errors."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import pretrained
from cnn_jax import train
from cnn_jax import transfer
from configs import mnist as mnist_config

SHAPE = (28, 28, 1)
# A small simple CNN: conv1-bn1-conv2-bn2-dense1-head.
SMALL = dict(features=(8, 16), hidden=32)


def _model_config(config, num_classes, use_batchnorm):
  config.model.num_classes = num_classes
  config.model.use_batchnorm = use_batchnorm
  for key, value in SMALL.items():
    config.model[key] = value


def _source_npz(tmp_path, use_batchnorm=True, num_classes=10):
  """Weights of a 'pretrained' small CNN as an .npz in our layout, with
  non-trivial BN statistics and a -0.0 (which p + 0.0 would turn into +0.0)."""
  config = mnist_config.get_config()
  _model_config(config, num_classes, use_batchnorm)
  model = train.create_model(config.model)
  params, batch_stats = train.initialized(jax.random.PRNGKey(42), model, SHAPE)
  variables = jax.device_get({"params": params, "batch_stats": batch_stats})
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda x: (x + rng.uniform(0.1, 0.5, x.shape)).astype(x.dtype),
      variables)
  variables["params"]["dense1"]["bias"][0] = -0.0
  path = tmp_path / "source.npz"
  np.savez(path, **pretrained.to_flat_variables(variables))
  return str(path), variables


def _transfer_config(init_from, num_classes=5, use_batchnorm=True, **options):
  config = mnist_config.get_config()
  _model_config(config, num_classes, use_batchnorm)
  config.optim.schedule = "constant"
  config.optim.learning_rate = 1e-2
  config.optim.weight_decay = 0.1  # must not reach frozen parameters
  config.transfer = transfer.default_transfer_config()
  config.transfer.init_from = init_from
  config.transfer.dont_load = ("head/.*",)
  for key, value in options.items():
    config.transfer[key] = value
  return config


def _state(config, steps_per_epoch=10, seed=0):
  state, _ = train.create_train_state(config, jax.random.PRNGKey(seed), SHAPE,
                                      steps_per_epoch)
  return transfer.restore_init_from(state, config.transfer)


def _batches(n, seed=0, size=16):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 255, (size, *SHAPE)).astype(np.uint8),
           "label": rng.integers(0, 5, size).astype(np.int32)}
          for _ in range(n)]


_STEP = jax.jit(functools.partial(train.train_step, mean=0.13, std=0.3))


def _train(state, batches, transfer_config=None, steps_per_epoch=10):
  for step, batch in enumerate(batches):
    state = transfer.at_step(state, step, transfer_config, steps_per_epoch)
    state, _ = _STEP(state, batch)
  return state


def _bits(x):
  x = np.asarray(x)
  return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


def _assert_bitwise_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(_bits(x), _bits(y)),
               a, b)


def _without(tree, key):
  return {k: v for k, v in tree.items() if k != key}


def test_feature_extraction_freezes_params_and_batch_stats_bitwise(tmp_path):
  init_from, source = _source_npz(tmp_path)
  config = _transfer_config(init_from, mode="feature_extraction")
  start = _state(config)
  start_host = jax.device_get((start.params, start.batch_stats))
  state = _train(start, _batches(4))
  params, batch_stats = jax.device_get((state.params, state.batch_stats))

  # Every frozen parameter and every (frozen) BN statistic: same bits as
  # the source, -0.0 included; the new head trained.
  _assert_bitwise_equal(_without(params, "head"),
                        _without(source["params"], "head"))
  _assert_bitwise_equal(batch_stats, source["batch_stats"])
  _assert_bitwise_equal(start_host[1], batch_stats)
  assert not np.array_equal(params["head"]["kernel"],
                            start_host[0]["head"]["kernel"])
  # Moments only for the head: AdamW's mu and nu, and a step count.
  float_sizes = [x.size for x in jax.tree.leaves(state.opt_state)
                 if jnp.issubdtype(x.dtype, jnp.floating)]
  head_size = sum(x.size for x in jax.tree.leaves(params["head"]))
  assert sum(float_sizes) == 2 * head_size


def test_frozen_batchnorm_normalises_with_running_averages(tmp_path):
  init_from, _ = _source_npz(tmp_path)
  config = _transfer_config(init_from, mode="feature_extraction")
  state = _state(config)
  model = train.create_model(config.model)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((8, *SHAPE)),
                  jnp.float32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  training, updates = state.apply_fn(variables, x, train=True,
                                     mutable=["batch_stats"])
  chex.assert_trees_all_close(training, model.apply(variables, x, train=False),
                              atol=1e-6)
  _assert_bitwise_equal(updates["batch_stats"], state.batch_stats)
  # The unwrapped model in training mode would use (and write) batch stats.
  plain, plain_updates = model.apply(variables, x, train=True,
                                     mutable=["batch_stats"])
  assert not np.allclose(plain, training)
  assert not np.allclose(plain_updates["batch_stats"]["bn1"]["mean"],
                         state.batch_stats["bn1"]["mean"])


def test_fine_tune_with_zero_backbone_lr_equals_feature_extraction(tmp_path):
  # Without BatchNorm: fine-tuning normalises the backbone with batch
  # statistics, feature extraction with the running ones, so with BN the two
  # differ by design even at backbone_lr_scale=0.
  init_from, _ = _source_npz(tmp_path, use_batchnorm=False)
  batches = _batches(5)
  finetuned = _train(_state(_transfer_config(
      init_from, use_batchnorm=False, mode="fine_tune",
      backbone_lr_scale=0.0)), batches)
  extracted = _train(_state(_transfer_config(
      init_from, use_batchnorm=False, mode="feature_extraction")), batches)
  chex.assert_trees_all_close(finetuned.params, extracted.params, atol=1e-6)
  assert not np.allclose(finetuned.params["head"]["kernel"],
                         _state(_transfer_config(
                             init_from, use_batchnorm=False, mode="fine_tune",
                             backbone_lr_scale=0.0)).params["head"]["kernel"])


def test_backbone_learning_rate_is_scaled(tmp_path):
  init_from, _ = _source_npz(tmp_path, use_batchnorm=False)
  batch = _batches(1)

  def deltas(scale):
    config = _transfer_config(init_from, use_batchnorm=False, mode="fine_tune",
                              backbone_lr_scale=scale)
    config.optim.name = "sgd"
    config.optim.weight_decay = 0.0
    start = _state(config)
    end = _train(start, batch)
    return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                        end.params, start.params)

  full, tenth = deltas(1.0), deltas(0.1)
  chex.assert_trees_all_close(tenth["head"], full["head"], atol=1e-7)
  chex.assert_trees_all_close(
      _without(tenth, "head"),
      jax.tree.map(lambda d: 0.1 * d, _without(full, "head")), atol=1e-7)
  assert np.abs(full["conv1"]["kernel"]).max() > 1e-5


def test_partial_restore_into_a_new_head(tmp_path):
  init_from, source = _source_npz(tmp_path, num_classes=10)
  config = _transfer_config(init_from, num_classes=5)
  fresh, _ = train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  restored = transfer.restore_init_from(fresh, config.transfer)
  params = jax.device_get(restored.params)
  _assert_bitwise_equal(_without(params, "head"),
                        _without(source["params"], "head"))
  _assert_bitwise_equal(restored.batch_stats, source["batch_stats"])
  assert params["head"]["kernel"].shape == (32, 5)
  _assert_bitwise_equal(params["head"], jax.device_get(fresh.params["head"]))


def test_shape_mismatch_names_every_path_and_both_shapes(tmp_path):
  init_from, _ = _source_npz(tmp_path, num_classes=10)
  config = _transfer_config(init_from, num_classes=5)
  config.transfer.dont_load = ()
  state, _ = train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  with pytest.raises(ValueError) as error:
    transfer.restore_init_from(state, config.transfer)
  message = str(error.value)
  assert "params/head/kernel: (32, 10) in" in message
  assert "(32, 5) in the model" in message
  assert "params/head/bias: (10,)" in message and "(5,) in the model" in message
  assert "dont_load" in message


def test_variable_missing_from_the_source_is_named(tmp_path):
  init_from, _ = _source_npz(tmp_path, use_batchnorm=False)
  config = _transfer_config(init_from, use_batchnorm=True)
  state, _ = train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  with pytest.raises(ValueError, match=r"not in .*params/bn1/scale.*"
                     r"batch_stats/bn1/mean"):
    transfer.restore_init_from(state, config.transfer)


@pytest.mark.parametrize("key,value,match", [
    ("freeze", ("conv1/.*", "layer9_.*"), r"'layer9_\.\*' matches no variable"),
    ("dont_load", ("classifier/.*",), r"dont_load: pattern 'classifier/\.\*'"),
    ("freeze", ("conv1/(",), r"'conv1/\(' is not a valid regular expression"),
    ("mode", "linear_probe", r"mode='linear_probe' is not one of"),
])
def test_bad_patterns_and_options_are_named(tmp_path, key, value, match):
  config = _transfer_config(str(tmp_path / "unused.npz"))
  config.transfer[key] = value
  with pytest.raises(ValueError, match=match):
    train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)


def test_unfreeze_pattern_must_select_a_frozen_variable(tmp_path):
  config = _transfer_config(str(tmp_path / "unused.npz"), freeze=("conv1/.*",),
                            unfreeze_after_epochs=1, unfreeze=("head/.*",))
  with pytest.raises(ValueError, match="'head/.*' selects no frozen"):
    train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)


def test_dry_run_lists_the_group_of_every_variable(tmp_path):
  init_from, _ = _source_npz(tmp_path)
  config = _transfer_config(init_from, mode="fine_tune", backbone_lr_scale=0.1,
                            freeze=("conv1/.*", "bn1/.*"))
  model = train.create_model(config.model)
  params, batch_stats = train.initialized(jax.random.PRNGKey(0), model, SHAPE)
  plan = transfer.Plan.from_config(config.transfer)
  variables = {"params": params, "batch_stats": batch_stats}
  assert transfer.select((".*/kernel",), transfer.variable_paths(variables)) == {
      ".*/kernel": ["conv1/kernel", "conv2/kernel", "dense1/kernel",
                    "head/kernel"]}
  _, restored = transfer.restore_variables(
      plan, variables, pretrained.load(init_from))
  table = plan.describe(variables, restored)
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:-1]}
  assert rows["params/conv1/kernel"][-2:] == ["frozen", "init_from"]
  assert rows["batch_stats/bn1/mean"][-2:] == ["frozen", "init_from"]
  assert rows["params/conv2/kernel"][-2:] == ["backbone", "init_from"]
  assert rows["batch_stats/bn2/var"][-2:] == ["updated", "init_from"]
  assert rows["params/head/bias"][-2:] == ["head", "fresh"]


def test_scheduled_unfreezing(tmp_path):
  init_from, source = _source_npz(tmp_path)
  config = _transfer_config(init_from, mode="feature_extraction",
                            unfreeze_after_epochs=1,
                            unfreeze=("dense1/.*",))
  per_epoch = 2
  start = _state(config, steps_per_epoch=per_epoch)
  batches = _batches(4)
  frozen_phase = _train(start, batches[:2], config.transfer, per_epoch)
  _assert_bitwise_equal(jax.device_get(frozen_phase.params["dense1"]),
                        source["params"]["dense1"])
  groups = frozen_phase.opt_state[1].inner_states
  assert int(groups["unfrozen"].inner_state.count) == 2
  # Untouched while frozen: the adam state is still as initialised.
  assert int(groups["unfrozen"].inner_state.inner_state[0].count) == 0
  assert int(groups["head"].inner_state[0].count) == 2

  state = frozen_phase
  for step, batch in enumerate(batches[2:], start=2):
    state = transfer.at_step(state, step, config.transfer, per_epoch)
    state, _ = _STEP(state, batch)
  params = jax.device_get(state.params)
  assert not np.array_equal(params["dense1"]["kernel"],
                            source["params"]["dense1"]["kernel"])
  _assert_bitwise_equal(params["conv2"], source["params"]["conv2"])
  _assert_bitwise_equal(state.batch_stats, source["batch_stats"])
  groups = state.opt_state[1].inner_states
  assert int(groups["unfrozen"].inner_state.inner_state[0].count) == 2
  assert int(groups["head"].inner_state[0].count) == 4


def test_configs_without_a_transfer_section_train_as_before():
  config = mnist_config.get_config()
  assert "transfer" not in config
  state, _ = train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  assert not hasattr(state.apply_fn, "plan")
  config.transfer = transfer.default_transfer_config()  # present but off
  state, _ = train.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  assert not hasattr(state.apply_fn, "plan")


def test_train_and_evaluate_from_a_checkpoint_with_unfreezing(tiny_mnist_dir,
                                                              tmp_path):
  """A pretraining run's checkpoint into a new run: restored, frozen,
  unfrozen on schedule, saved and summarised."""
  source_config = mnist_config.get_config()
  source_config.data.data_dir = str(tiny_mnist_dir)
  source_config.data.batch_size = 64
  source_config.data.eval_batch_size = 100
  source_config.train.num_epochs = 1
  _model_config(source_config, 10, True)
  train.train_and_evaluate(source_config, str(tmp_path / "pretrain"))
  source = transfer.load_source(str(tmp_path / "pretrain"))

  config = mnist_config.get_config()
  config.data = source_config.data
  _model_config(config, 4, True)  # a new 4-class head
  config.train.num_epochs = 2
  config.transfer = transfer.default_transfer_config()
  config.transfer.init_from = str(tmp_path / "pretrain")
  config.transfer.dont_load = ("head/.*",)
  config.transfer.mode = "feature_extraction"
  config.transfer.unfreeze_after_epochs = 1
  config.transfer.unfreeze = ("dense1/.*",)
  summary = train.train_and_evaluate(config, str(tmp_path / "transfer"))
  assert summary["steps"] == 8
  result = transfer.load_source(str(tmp_path / "transfer"))
  for name in ("conv1", "bn1", "conv2", "bn2"):
    _assert_bitwise_equal(result["params"][name], source["params"][name])
  _assert_bitwise_equal(result["batch_stats"], source["batch_stats"])
  assert not np.array_equal(result["params"]["dense1"]["kernel"],
                            source["params"]["dense1"]["kernel"])
  with open(tmp_path / "transfer" / "summary.json", encoding="utf-8") as f:
    assert json.load(f)["config"]["transfer"]["mode"] == "feature_extraction"
