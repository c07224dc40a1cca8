"""steps.INIT_COMPILER_OPTIONS: the programs that initialise a model compile
faster on the CPU and give bitwise the values XLA's default options give;
init_compiler_options applies them where the user has not chosen a level."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.models import MODELS
from cnn_jax.training import steps


def _init_values(model, shape, options):
  rngs = {"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(3)}
  init = jax.jit(functools.partial(model.init, train=False),
                 compiler_options=options)
  return jax.device_get(init(rngs, jnp.zeros((1, *shape), jnp.float32)))


@pytest.mark.parametrize("name, shape", [
    ("simple_cnn", (28, 28, 1)),
    pytest.param("resnet18_cifar", (32, 32, 3), marks=pytest.mark.slow),
])
def test_init_options_give_bitwise_the_default_values(name, shape):
  if jax.default_backend() != "cpu":
    pytest.skip("XLA's defaults off the CPU: nothing to compare")
  options = steps.INIT_COMPILER_OPTIONS
  model = MODELS[name](num_classes=10)
  ours = _init_values(model, shape, options)
  # XLA's default level (3), named: this suite itself runs at level 0
  # (tests/conftest.py), which gives other values.
  default = _init_values(model, shape, {"xla_backend_optimization_level": 3})
  assert jax.tree.structure(ours) == jax.tree.structure(default)
  for path, a, b in zip(jax.tree_util.tree_flatten_with_path(ours)[0],
                        jax.tree.leaves(ours), jax.tree.leaves(default)):
    assert a.dtype == b.dtype and np.array_equal(a, b), path[0]


def test_init_options_apply_unless_xla_flags_set_the_level(monkeypatch):
  if jax.default_backend() != "cpu":
    pytest.skip("XLA's defaults off the CPU")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert steps.init_compiler_options() == steps.INIT_COMPILER_OPTIONS
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert steps.init_compiler_options() is None


def test_init_options_reach_the_compiler():
  """The option is one XLA knows: a wrong name would fail to compile."""
  options = steps.INIT_COMPILER_OPTIONS
  compiled = jax.jit(lambda x: x * 2.0, compiler_options=options).lower(
      jnp.ones(3)).compile()
  np.testing.assert_array_equal(compiled(jnp.ones(3)), 2.0 * np.ones(3))
  with pytest.raises(Exception, match="no_such_option"):
    jax.jit(lambda x: x * 2.0,
            compiler_options={"xla_no_such_option": 1}).lower(
                jnp.ones(3)).compile()


# Programs of one primitive, compiled when an array is made eagerly (the
# state's step counter): not what the test counts.
_EAGER = ("jit(convert_element_type)", "jit(broadcast_in_dim)")


def _backend_compiles(fn):
  """fn()'s result and the programs XLA compiled while it ran."""
  compiles = []

  def listener(event, seconds, fun_name="", **kwargs):
    del seconds, kwargs
    if (event == "/jax/core/compile/backend_compile_duration"
        and fun_name not in _EAGER):
      compiles.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return result, compiles


@pytest.mark.parametrize("config_name", ["mnist_tta", "transfer_digits"])
def test_train_state_is_one_compiled_program_with_the_separate_values(
    config_name):
  """create_train_state computes the variables and the optimizer's state
  in one program (one compile of a cold start instead of two), bitwise as
  model.init and tx.init compute them on their own; a transfer config's
  optimizer (groups checked against the variables' shapes) too."""
  config = __import__(f"configs.{config_name}",
                      fromlist=["get_config"]).get_config()
  # A seed no other test uses: nothing of this is in JAX's in-memory caches.
  rng = jax.random.PRNGKey(4242)
  jax.block_until_ready(rng)
  jax.block_until_ready(jax.random.fold_in(rng, 1))  # the state's rng
  state, compiles = _backend_compiles(lambda: jax.block_until_ready(
      steps.create_train_state(config, rng, (28, 28, 1), 12)[0]))
  assert len(compiles) == 1, compiles
  model = steps.create_model(config.model)
  params, batch_stats = steps.initialized(rng, model, (28, 28, 1))
  opt_state = jax.jit(state.tx.init)(params)
  ours = (state.params, state.batch_stats, state.opt_state)
  separate = (params, batch_stats, opt_state)
  assert jax.tree.structure(ours) == jax.tree.structure(separate)
  for path, a, b in zip(jax.tree_util.tree_flatten_with_path(ours)[0],
                        jax.tree.leaves(ours), jax.tree.leaves(separate)):
    assert a.dtype == b.dtype and np.array_equal(a, b), path[0]
