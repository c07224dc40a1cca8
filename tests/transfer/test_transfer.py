"""cnn_jax.transfer: frozen means bitwise unchanged (BatchNorm included),
per-group learning rates, scheduled unfreezing, partial restore, errors.

Compilation dominates on CPU, so the states are built once per module where
tests can share them, and the source weights are random arrays of the right
shapes (jax.eval_shape: nothing compiled).
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn_jax.runs import checkpoint
from cnn_jax.training import preemption
from cnn_jax.training import steps
from cnn_jax.training import train
from cnn_jax.transfer import dry_run as transfer_dry_run
from cnn_jax.transfer import hooks
from cnn_jax.transfer import optimizer
from cnn_jax.transfer import paths
from cnn_jax.transfer import plan as transfer_plan
from cnn_jax.transfer import pretrained
from cnn_jax.transfer import restore
from configs import mnist as mnist_config

SHAPE = (28, 28, 1)
# A small simple CNN: conv1-bn1-conv2-bn2-dense1-head.
SMALL = dict(features=(8, 16), hidden=32)


def _model_config(config, num_classes, use_batchnorm):
  config.model.num_classes = num_classes
  config.model.use_batchnorm = use_batchnorm
  for key, value in SMALL.items():
    config.model[key] = value


def _shapes(config):
  """{'params', 'batch_stats'} as ShapeDtypeStructs (nothing computed)."""
  model = steps.create_model(config.model)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False),
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
      jnp.zeros((1, *SHAPE)))
  return {"params": variables["params"],
          "batch_stats": variables.get("batch_stats", {})}


def _write_source(path, use_batchnorm, num_classes=10):
  """'Pretrained' weights of the small CNN as an .npz in our layout: random,
  BN statistics far from (0, 1), and a -0.0 (which p + 0.0 makes +0.0)."""
  config = mnist_config.get_config()
  _model_config(config, num_classes, use_batchnorm)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.uniform(0.1, 0.5, s.shape).astype(s.dtype),
      _shapes(config))
  variables["params"]["dense1"]["bias"][0] = -0.0
  np.savez(path, **pretrained.to_flat_variables(variables))
  return str(path), variables


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sources")
  return {"bn": _write_source(folder / "bn.npz", True),
          "plain": _write_source(folder / "plain.npz", False)}


def _transfer_config(init_from, num_classes=5, use_batchnorm=True, **options):
  config = mnist_config.get_config()
  _model_config(config, num_classes, use_batchnorm)
  config.optim.schedule = "constant"
  config.optim.learning_rate = 1e-2
  config.optim.weight_decay = 0.1  # must not reach frozen parameters
  config.transfer = transfer_plan.default_transfer_config()
  config.transfer.init_from = init_from
  config.transfer.dont_load = ("head/.*",)
  for key, value in options.items():
    config.transfer[key] = value
  return config


def _batches(n, seed=0, size=16):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 255, (size, *SHAPE)).astype(np.uint8),
           "label": rng.integers(0, 5, size).astype(np.int32)}
          for _ in range(n)]


_STEP = jax.jit(functools.partial(steps.train_step, mean=0.13, std=0.3))


def _train(state, batches, transfer_config=None, steps_per_epoch=10,
           first_step=0):
  for step, batch in enumerate(batches, start=first_step):
    state = hooks.at_step(state, step, transfer_config, steps_per_epoch)
    state, _ = _STEP(state, batch)
  return state


def _bits(x):
  x = np.asarray(x)
  return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


def _assert_bitwise_equal(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(_bits(x), _bits(y)),
               a, b)


def _without(tree, key):
  return {k: v for k, v in tree.items() if k != key}


def _moment_sizes(opt_state):
  """Elements of the optimizer state's arrays (scalars such as step counts
  and injected hyperparameters left out)."""
  return sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim)


def _same_model_state(config, fresh, steps_per_epoch=10):
  """What create_train_state(config) builds, from `fresh` (a state of the
  same model) without compiling the model's init again; init_from restored."""
  model = steps.create_model(config.model)
  tx, apply_fn = hooks.optimizer_and_apply(
      config.transfer, config.optim,
      steps.learning_rate_schedule(config, steps_per_epoch), steps_per_epoch,
      model.apply, {"params": fresh.params, "batch_stats": fresh.batch_stats})
  state = fresh.replace(tx=tx, apply_fn=apply_fn,
                        opt_state=tx.init(fresh.params))
  return restore.restore_init_from(state, config.transfer)


@pytest.fixture(scope="module")
def feature_extraction(sources):
  """(config, fresh state, state after restoring init_from): a 10-class
  source into a 5-class model, BN, mode='feature_extraction'."""
  config = _transfer_config(sources["bn"][0], mode="feature_extraction")
  fresh, _ = steps.create_train_state(config, jax.random.PRNGKey(0), SHAPE,
                                      10)
  return config, fresh, restore.restore_init_from(fresh, config.transfer)


def test_partial_restore_into_a_new_head(sources, feature_extraction):
  _, source = sources["bn"]
  _, fresh, restored = feature_extraction
  params = jax.device_get(restored.params)
  _assert_bitwise_equal(_without(params, "head"),
                        _without(source["params"], "head"))
  _assert_bitwise_equal(jax.device_get(restored.batch_stats),
                        source["batch_stats"])
  assert params["head"]["kernel"].shape == (32, 5)  # the source's is (32, 10)
  _assert_bitwise_equal(params["head"], jax.device_get(fresh.params["head"]))


def test_feature_extraction_freezes_params_and_batch_stats_bitwise(
    sources, feature_extraction):
  _, source = sources["bn"]
  _, _, start = feature_extraction
  state = _train(start, _batches(3))
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  # Every frozen parameter and BN statistic keeps its bits (-0.0 included)
  # through AdamW with weight decay; the new head trained.
  _assert_bitwise_equal(_without(params, "head"),
                        _without(source["params"], "head"))
  _assert_bitwise_equal(batch_stats, source["batch_stats"])
  assert not np.array_equal(params["head"]["kernel"],
                            np.asarray(start.params["head"]["kernel"]))
  # Moments only for the head: AdamW's mu and nu.
  head_size = sum(x.size for x in jax.tree.leaves(params["head"]))
  assert _moment_sizes(state.opt_state) == 2 * head_size
  groups = state.opt_state[1].inner_states
  assert jax.tree.leaves(groups["frozen"]) == []


def test_frozen_batchnorm_normalises_with_running_averages(feature_extraction):
  config, _, state = feature_extraction
  model = steps.create_model(config.model)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((8, *SHAPE)),
                  jnp.float32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  @jax.jit
  def forward(variables):
    frozen, frozen_updates = state.apply_fn(variables, x, train=True,
                                            mutable=["batch_stats"])
    plain, plain_updates = model.apply(variables, x, train=True,
                                       mutable=["batch_stats"])
    return (frozen, frozen_updates, plain, plain_updates,
            model.apply(variables, x, train=False))

  frozen, frozen_updates, plain, plain_updates, evaluated = forward(variables)
  chex.assert_trees_all_close(frozen, evaluated, atol=1e-6)
  _assert_bitwise_equal(jax.device_get(frozen_updates["batch_stats"]),
                        jax.device_get(state.batch_stats))
  # Unwrapped, training mode normalises with (and stores) batch statistics.
  assert not np.allclose(plain, frozen)
  assert not np.allclose(plain_updates["batch_stats"]["bn1"]["mean"],
                         state.batch_stats["bn1"]["mean"])


def test_fine_tune_with_zero_backbone_lr_equals_feature_extraction(sources):
  # Without BatchNorm: fine-tuning normalises the backbone with batch
  # statistics, feature extraction with the running ones, so with BN the two
  # differ by design even at backbone_lr_scale=0.
  init_from, _ = sources["plain"]
  batches = _batches(4)
  config = _transfer_config(init_from, use_batchnorm=False,
                            mode="feature_extraction")
  fresh, _ = steps.create_train_state(config, jax.random.PRNGKey(0), SHAPE, 10)
  start = restore.restore_init_from(fresh, config.transfer)
  states = {"feature_extraction": _train(start, batches)}
  config.transfer.mode = "fine_tune"
  config.transfer.backbone_lr_scale = 0.0
  states["fine_tune"] = _train(_same_model_state(config, fresh), batches)
  chex.assert_trees_all_close(states["fine_tune"].params,
                              states["feature_extraction"].params, atol=1e-6)
  assert not np.allclose(states["fine_tune"].params["head"]["kernel"],
                         start.params["head"]["kernel"])


def test_backbone_learning_rate_is_scaled():
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))},
            "head": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
            "stem": {"kernel": jnp.full((2,), -0.0)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  optim_config = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.5, weight_decay=0.0, momentum=0.9, b1=0.9,
      b2=0.999, grad_clip_norm=0.0))

  def updates(scale):
    plan = transfer_plan.Plan(dont_load=("head/.*",), freeze=("stem/.*",),
                         mode="fine_tune", backbone_lr_scale=scale)
    tx = optimizer.make_optimizer(plan, optim_config, 0.5)
    return tx.update(grads, tx.init(params), params)[0]

  full, tenth = updates(1.0), updates(0.1)
  np.testing.assert_allclose(full["conv"]["kernel"], -1.0)  # -lr * grad
  np.testing.assert_allclose(tenth["conv"]["kernel"], -0.1)
  chex.assert_trees_all_close(tenth["head"], full["head"])
  # Frozen: -0.0 updates, so p + u keeps every bit of p, -0.0 included.
  stem = optax.apply_updates(params, tenth)["stem"]["kernel"]
  np.testing.assert_array_equal(_bits(stem), _bits(params["stem"]["kernel"]))


def test_scheduled_unfreezing(sources, feature_extraction):
  init_from, source = sources["bn"]
  config = _transfer_config(init_from, mode="feature_extraction",
                            unfreeze_after_epochs=1, unfreeze=("dense1/.*",))
  per_epoch = 2
  start = _same_model_state(config, feature_extraction[1], per_epoch)
  batches = _batches(4)
  frozen_phase = _train(start, batches[:2], config.transfer, per_epoch)
  _assert_bitwise_equal(jax.device_get(frozen_phase.params["dense1"]),
                        source["params"]["dense1"])
  unfrozen_group = frozen_phase.opt_state[1].inner_states["unfrozen"]
  assert int(unfrozen_group.inner_state.count) == 2
  # Idle while frozen: its optimizer state is still as initialised.
  _assert_bitwise_equal(
      jax.device_get(unfrozen_group.inner_state.inner_state),
      jax.device_get(start.opt_state[1].inner_states["unfrozen"]
                     .inner_state.inner_state))

  state = _train(frozen_phase, batches[2:], config.transfer, per_epoch,
                 first_step=2)
  assert state.apply_fn.plan.unfrozen
  params = jax.device_get(state.params)
  assert not np.array_equal(params["dense1"]["kernel"],
                            source["params"]["dense1"]["kernel"])
  _assert_bitwise_equal(params["conv2"], source["params"]["conv2"])
  _assert_bitwise_equal(jax.device_get(state.batch_stats),
                        source["batch_stats"])
  # Moments for the head and dense1 (from the start, so checkpoints keep
  # one structure), none for the convs and BNs.
  trained = sum(x.size for name in ("head", "dense1")
                for x in jax.tree.leaves(params[name]))
  assert _moment_sizes(state.opt_state) == 2 * trained


@pytest.mark.parametrize("key,value,match", [
    ("freeze", ("conv1/.*", "layer9_.*"), r"'layer9_\.\*' matches no variable"),
    ("dont_load", ("classifier/.*",), r"dont_load: pattern 'classifier/\.\*'"),
    ("freeze", ("conv1/(",), r"'conv1/\(' is not a valid regular expression"),
    ("mode", "linear_probe", r"mode='linear_probe' is not one of"),
    ("unfreeze", ("head/.*",), "'head/.*' selects no frozen variable"),
])
def test_bad_patterns_and_options_are_named(key, value, match):
  config = _transfer_config("unused.npz", freeze=("conv1/.*",))
  config.transfer[key] = value
  if key == "unfreeze":
    config.transfer.unfreeze_after_epochs = 1
  with pytest.raises(ValueError, match=match):
    hooks.optimizer_and_apply(config.transfer, config.optim, 1e-3, 10,
                                 None, _shapes(config))


def test_shape_mismatch_names_every_path_and_both_shapes(sources):
  init_from, source = sources["bn"]
  config = _transfer_config(init_from)  # 5 classes; the source has 10
  plan = transfer_plan.Plan()  # load everything, the head too
  with pytest.raises(ValueError) as error:
    restore.restore_variables(plan, _shapes(config), source, "src.npz")
  message = str(error.value)
  assert "params/head/kernel: (32, 10) in src.npz, (32, 5) in the model" in (
      message)
  assert "params/head/bias: (10,) in src.npz, (5,) in the model" in message
  assert "dont_load" in message


def test_variable_missing_from_the_source_is_named(sources):
  _, source = sources["plain"]  # no BatchNorm
  config = _transfer_config("unused", num_classes=10)
  with pytest.raises(ValueError, match=r"not in src: .*params/bn1/scale.*"
                     r"batch_stats/bn1/mean"):
    restore.restore_variables(transfer_plan.Plan(), _shapes(config), source,
                              "src")


def test_dry_run_lists_the_group_of_every_variable(sources):
  init_from, _ = sources["bn"]
  config = _transfer_config(init_from, mode="fine_tune", backbone_lr_scale=0.1,
                            freeze=("conv1/.*", "bn1/.*"))
  variables = _shapes(config)
  assert paths.select((".*/kernel",), paths.variable_paths(variables)) == {
      ".*/kernel": ["conv1/kernel", "conv2/kernel", "dense1/kernel",
                    "head/kernel"]}
  plan = transfer_plan.Plan.from_config(config.transfer)
  _, restored = restore.restore_variables(plan, variables,
                                           pretrained.load(init_from))
  table = plan.describe(variables, restored)
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:-1]}
  assert rows["params/conv1/kernel"][-2:] == ["frozen", "init_from"]
  assert rows["batch_stats/bn1/mean"][-2:] == ["frozen", "init_from"]
  assert rows["params/conv2/kernel"][-2:] == ["backbone", "init_from"]
  assert rows["batch_stats/bn2/var"][-2:] == ["updated", "init_from"]
  assert rows["params/head/bias"][-2:] == ["head", "fresh"]


def test_configs_without_a_transfer_section_train_as_before():
  config = mnist_config.get_config()
  assert "transfer" not in config
  state = steps.abstract_train_state(config, SHAPE, 10)
  assert not hasattr(state.apply_fn, "plan")
  config.transfer = transfer_plan.default_transfer_config()  # present but off
  state = steps.abstract_train_state(config, SHAPE, 10)
  assert not hasattr(state.apply_fn, "plan")
  assert hooks.at_step(state, 5, config.transfer, 10) is state


def test_train_and_evaluate_from_a_checkpoint_with_unfreezing(
    tiny_mnist_dir, tmp_path, feature_extraction):
  """A run folder's checkpoint (here of the 5-class feature-extraction
  state, a multi_transform optimizer state) into a new 10-class run that
  unfreezes dense1 after an epoch: restored, frozen, preempted, resumed,
  saved, summarised."""
  _, _, source_state = feature_extraction
  manager = checkpoint.make_manager(tmp_path / "source",
                                    mnist_config.get_config().checkpoint)
  checkpoint.save(manager, source_state, {"step": 0})
  manager.wait_until_finished()
  manager.close()
  source = restore.load_source(str(tmp_path / "source"))
  _assert_bitwise_equal(source["params"],
                        jax.device_get(source_state.params))

  config = _transfer_config(str(tmp_path / "source"), num_classes=10,
                            mode="feature_extraction",
                            unfreeze_after_epochs=1, unfreeze=("dense1/.*",))
  config.data.data_dir = str(tiny_mnist_dir)
  config.data.batch_size = 128  # 2 steps an epoch
  config.data.eval_batch_size = 100
  config.train.num_epochs = 2
  # Stopped after step 3 (one past the unfreezing) and resumed: the
  # checkpoint restores into the state create_train_state builds, and the
  # resumed run continues with dense1 unfrozen.
  config.train.stop_after_steps = 3
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config, str(tmp_path / "transfer"))
  config.train.stop_after_steps = 0
  summary = train.train_and_evaluate(config, str(tmp_path / "transfer"))
  assert summary["steps"] == 4 and summary["resumed_from_step"] == 3
  result = restore.load_source(str(tmp_path / "transfer"))
  for name in ("conv1", "bn1", "conv2", "bn2"):
    _assert_bitwise_equal(result["params"][name], source["params"][name])
  _assert_bitwise_equal(result["batch_stats"], source["batch_stats"])
  assert not np.array_equal(result["params"]["dense1"]["kernel"],
                            source["params"]["dense1"]["kernel"])
  with open(tmp_path / "transfer" / "summary.json", encoding="utf-8") as f:
    assert json.load(f)["config"]["transfer"]["mode"] == "feature_extraction"


@pytest.mark.parametrize("method", ["scratch", "feature_extraction",
                                    "fine_tune"])
def test_transfer_digits_configs_build(tmp_path, method):
  """configs/transfer_digits*.py: every method builds its state (shapes
  only) and its dry run; fine-tuning also takes a step from init_from."""
  from configs import transfer_digits  # pylint: disable=import-outside-toplevel
  from configs import transfer_digits_pretrain  # pylint: disable=import-outside-toplevel
  assert not transfer_plan.is_active(transfer_digits_pretrain.get_config().transfer)
  config = transfer_digits.get_config(method)
  rng = np.random.default_rng(0)
  source = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype),
                        _shapes(config))
  np.savez(tmp_path / "source.npz", **pretrained.to_flat_variables(source))
  if config.transfer.init_from:
    config.transfer.init_from = str(tmp_path / "source.npz")
  table = transfer_dry_run.dry_run(config, SHAPE)
  assert ("off: every variable trains" in table) == (method == "scratch")
  abstract = steps.abstract_train_state(config, SHAPE, 3)
  assert hasattr(abstract.apply_fn, "plan") == (method != "scratch")
  if method == "fine_tune":
    state, _ = steps.create_train_state(config, jax.random.PRNGKey(0), SHAPE,
                                        3)
    state = restore.restore_init_from(state, config.transfer)
    state, metrics = _STEP(state, _batches(1)[0])
    assert np.isfinite(metrics["loss"])
