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
