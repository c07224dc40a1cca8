"""Data parallelism (cnn_jax/distributed/mesh.py) on 8 fake CPU devices, alone and
with sweep members (2 members x 4 devices per batch): the same parameters as
single runs on one device; and the gradient of BatchNorm before max-pooling
(the MNIST CNN's) sharded over 4 devices equals the one-device gradient at
XLA's backend optimisation levels 0 (the suite's) and 2 (the default).

The device count is fixed when JAX starts, so the 8-device checks run in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json

import pytest

from cnn_jax.distributed import mesh as parallel
from tests.conftest import run_on_cpu_devices

_EIGHT_DEVICES = r"""
import functools, json
import jax, jax.numpy as jnp, ml_collections, numpy as np
from cnn_jax.distributed import mesh as parallel
from cnn_jax.sweeps import sweep
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import steps
from configs import mnist

assert len(jax.devices()) == 8, jax.devices()
config = mnist.get_config()
config.model.features, config.model.hidden = (8, 16), 32
config.optim.name, config.optim.schedule = "momentum", "constant"
config.data.batch_size = 32
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 255, (32, 28, 28, 1)).astype(np.uint8),
         "label": rng.integers(0, 10, 32).astype(np.int32)}
step = functools.partial(steps.train_step, mean=0.13, std=0.3)

def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

# Two sweep members (the first is also the single run below); one init
# compile serves every state here.
config.sweep = ml_collections.ConfigDict({"mode": "zip", "axes": {
    "seed": (0, 1), "optim": {"learning_rate": (0.01, 0.03)}}})
_, configs = sweep_config.member_configs(config)
program = sweep_steps.shared_program(configs[0], 10)
initial = lambda: sweep_steps.init_members(configs, (28, 28, 1), 10, program)[0]

# A single run: batch split 8 ways over 'data', parameters replicated.
state = sweep_steps.member_state(initial(), 0)
mesh = parallel.make_mesh()
sharded_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
one, many = jax.jit(step), parallel.data_parallel(step, mesh,
                                                  donate_state=False)
single_state, parallel_state = state, state
for _ in range(3):
  single_state, single_metrics = one(single_state, batch)
  parallel_state, parallel_metrics = many(parallel_state, sharded_batch)
kernel = parallel_state.params["head"]["kernel"]
result = {
    "mesh": dict(mesh.shape),
    "examples_per_device": sharded_batch["image"].addressable_shards[0]
                           .data.shape[0],
    "params_replicated": kernel.sharding.is_fully_replicated
                         and len(kernel.sharding.device_set) == 8,
    "single_run_diff": max_diff(single_state.params, parallel_state.params),
    "loss_diff": abs(float(single_metrics["loss"])
                     - float(parallel_metrics["loss"])),
}

# The sweep: 2 members over 'members' x each batch over 4 'data' devices,
# against each member's single run on one device (`one`, compiled above).
augments = sweep_steps.distinct_augmentations(configs)
hparams = sweep_steps.hyperparameter_arrays(configs, augments)
stacked = {k: np.stack([v, v[::-1]]) for k, v in batch.items()}
mesh = parallel.make_mesh(member_devices=2)
train_step, _ = sweep._compiled_steps(  # what sweep.train_and_evaluate runs
    {}, program, augments, False, 0.13, 0.3, 2, 2, mesh)
on_members = parallel.member_sharding(mesh)
states = jax.device_put(initial(), on_members)
alive = jax.device_put(jnp.ones(2, bool), on_members)
sweep_batch = jax.device_put(stacked, parallel.batch_sharding(mesh, True))
hparams = jax.device_put(hparams, on_members)
for _ in range(3):
  states, alive, _ = train_step(states, alive, sweep_batch, hparams)
kernel = states.params["head"]["kernel"]
result["sweep_mesh"] = dict(mesh.shape)
result["member_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
result["sweep_diff"] = 0.0
for k in range(2):
  single = sweep_steps.member_state(initial(), k)
  member_batch = {key: value[k] for key, value in stacked.items()}
  for _ in range(3):
    single, _ = one(single, member_batch)
  result["sweep_diff"] = max(result["sweep_diff"], max_diff(
      sweep_steps.member_state(states, k).params, single.params))
print(json.dumps(result))
"""


def test_data_parallel_on_eight_devices_matches_one_device():
  stdout = run_on_cpu_devices(_EIGHT_DEVICES, devices=8)
  result = json.loads(stdout.strip().splitlines()[-1])
  assert result["mesh"] == {"members": 1, "data": 8}
  assert result["examples_per_device"] == 32 // 8
  assert result["params_replicated"]
  # Same global batch, same parameters (up to summation order).
  assert result["single_run_diff"] < 1e-5, result
  assert result["loss_diff"] < 1e-5, result
  assert result["sweep_mesh"] == {"members": 2, "data": 4}
  assert result["member_shard_shape"] == [1, 32, 10]  # one member per device
  # Each member on the 2 x 4 mesh == its single run on one device.
  assert result["sweep_diff"] < 1e-5, result


def test_mesh_and_batch_errors_name_the_config_key():
  with pytest.raises(ValueError, match="member_devices=3 does not divide"):
    parallel.make_mesh(member_devices=3, devices=[object()] * 4)
  mesh = parallel.make_mesh()
  assert dict(mesh.shape) == {"members": 1, "data": len(mesh.devices.flat)}
  if mesh.shape["data"] > 1:
    with pytest.raises(ValueError, match="config.data.batch_size=1 does not"):
      parallel.check_divisible(mesh, 1)
  parallel.check_divisible(mesh, 8 * mesh.shape["data"], members=4)


_RUN_MESH = r"""
import json
import ml_collections
from cnn_jax.distributed import mesh
from configs import mnist

config = mnist.get_config()
sizes = {"all": dict(mesh.run_mesh(config).shape)}
config.mesh.data_devices = 2
sizes["two"] = dict(mesh.run_mesh(config).shape)
del config["mesh"]  # a config from before config.mesh: all devices
sizes["no_section"] = dict(mesh.run_mesh(config).shape)
errors = []
for bad in (5, 0, -2):
  config.mesh = ml_collections.ConfigDict({"data_devices": bad})
  try:
    mesh.run_mesh(config)
  except ValueError as e:
    errors.append(str(e))
print(json.dumps({"sizes": sizes, "errors": errors}))
"""


def test_run_mesh_takes_config_mesh_data_devices():
  result = json.loads(run_on_cpu_devices(_RUN_MESH, 4).strip().splitlines()[-1])
  assert result["sizes"] == {"all": {"members": 1, "data": 4},
                             "two": {"members": 1, "data": 2},
                             "no_section": {"members": 1, "data": 4}}
  assert len(result["errors"]) == 3
  for error in result["errors"]:
    assert error.startswith("config.mesh.data_devices=") and "4" in error


_BN_POOL_GRADIENT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from cnn_jax.distributed import mesh as parallel
from cnn_jax.models.simple_cnn import SimpleCNN

model = SimpleCNN(use_batchnorm=True, conv_impl="xla")
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 28, 28, 1)).astype(np.float32)
y = rng.integers(0, 10, 32)
variables = model.init(jax.random.key(0), x[:1])

def loss(params, x, y):
  logits, _ = model.apply({**variables, "params": params}, x, train=True,
                          mutable=["batch_stats"])
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       y[:, None], 1))

grad = jax.grad(loss)
mesh = parallel.make_mesh()
on_all = parallel.replicated(mesh)
split = parallel.batch_sharding(mesh)
args = (variables["params"], x, y)
errors = {}
for level in (0, 2):
  options = {"xla_backend_optimization_level": level}
  one = jax.jit(grad).lower(*args).compile(options)(*args)
  sharded = jax.jit(grad, in_shardings=(on_all, split, split),
                    out_shardings=on_all).lower(*args).compile(options)(*args)
  errors[level] = {
      jax.tree_util.keystr(path): float(jnp.max(jnp.abs(a - b))
                                        / jnp.max(jnp.abs(a)))
      for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one),
                              jax.tree.leaves(sharded))}
print(json.dumps(errors))
"""


def test_batchnorm_max_pool_gradient_sharded_equals_one_device():
  # A fused max-pool gradient that counted tied maxima from the window's
  # slices came out 10-50% wrong in bn1's gradient here at level 0 only
  # (jaxlib 0.10.2); launch.py runs at the default level, the suite at 0.
  errors = json.loads(
      run_on_cpu_devices(_BN_POOL_GRADIENT, 4).strip().splitlines()[-1])
  for level in ("0", "2"):
    assert len(errors[level]) == 10  # conv1/2, bn1/2, dense1, head
    for path, error in errors[level].items():
      assert error < 1e-4, (level, path, error)
