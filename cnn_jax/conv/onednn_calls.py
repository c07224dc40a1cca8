"""The three passes of a oneDNN convolution as XLA custom calls that vmap
batches and jax.sharding splits by the batch (onednn.py makes them a
differentiable convolution).

`pass_call(target, geometry, out_dtype)` is one pass (onednn_build.FORWARD:
(x, kernel) -> y, BACKWARD_DATA: (dy, kernel) -> dx, BACKWARD_WEIGHTS:
(x, dy) -> dkernel, channels-last) as a function of its two operands, whose
result has `out_dtype` (theirs, or float32 for bfloat16 operands).
"""

import functools
from typing import Tuple

import jax
from jax import custom_batching
from jax import lax
from jax.experimental import custom_partitioning
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify

FORWARD = onednn_build.FORWARD
BACKWARD_DATA = onednn_build.BACKWARD_DATA
BACKWARD_WEIGHTS = onednn_build.BACKWARD_WEIGHTS

# geometry: (in_sizes, window, strides, pads, dilations), all tuples of ints.
Geometry = Tuple[Tuple[int, ...], ...]


def _result_shape(target: str, a_shape, b_shape, geometry: Geometry):
  """The custom call's result shape from its operands' (per-device) shapes:
  forward (x, kernel) -> y, backward_data (dy, kernel) -> dx,
  backward_weights (x, dy) -> dkernel."""
  in_sizes, window = geometry[0], geometry[1]
  if target == FORWARD:
    return (a_shape[0], *onednn_verify.out_sizes(geometry), b_shape[-1])
  if target == BACKWARD_DATA:
    return (a_shape[0], *in_sizes, b_shape[-2])
  return (*window, a_shape[-1], b_shape[-1])


def _local_call(target: str, geometry: Geometry, out_dtype: str, a, b):
  """The custom call: operands a, b of one dtype, the result `out_dtype`
  (theirs, or float32 for bfloat16 operands)."""
  _, _, strides, pads, dilations = geometry
  shape = _result_shape(target, a.shape, b.shape, geometry)
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, out_dtype))(
      a, b, strides=np.asarray(strides, np.int64),
      pads_lo=np.asarray([lo for lo, _ in pads], np.int64),
      pads_hi=np.asarray([hi for _, hi in pads], np.int64),
      dilations=np.asarray(dilations, np.int64))


# Data parallelism: without a partitioning rule, XLA's SPMD partitioner would
# gather a batch-sharded operand onto every device to run a custom call. The
# three passes are independent per example, so they run on each device's
# shard of the batch; the kernel gradient sums the shards' contributions.
_call = custom_partitioning.custom_partitioning(_local_call,
                                                static_argnums=(0, 1, 2))


def batch_axes(arg_shapes):
  """The mesh axes the batch (dim 0 of the first operand) is sharded over
  (also max_pool_native's partitioning)."""
  sharding = arg_shapes[0].sharding
  spec = getattr(sharding, "spec", None)
  return spec[0] if spec else None


def _shardings(target, mesh, batch):
  """(result sharding, operand shardings) for a batch sharded over `batch`."""
  by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if target == BACKWARD_WEIGHTS:
    return replicated, (by_batch, by_batch)
  return by_batch, (by_batch, replicated)


def _infer_sharding(target, geometry, out_dtype, mesh, arg_shapes,
                    result_shape):
  del geometry, out_dtype, result_shape
  return _shardings(target, mesh, batch_axes(arg_shapes))[0]


def _partition(target, geometry, out_dtype, mesh, arg_shapes, result_shape):
  del result_shape
  batch = batch_axes(arg_shapes)
  result_sharding, arg_shardings = _shardings(target, mesh, batch)

  def lower(a, b):
    out = _local_call(target, geometry, out_dtype, a, b)
    if target == BACKWARD_WEIGHTS and batch is not None:
      out = lax.psum(out, batch)
    return out

  return mesh, lower, result_sharding, arg_shardings


def _sharding_rule(target, geometry, out_dtype, mesh, operand_types,
                   result_types):
  """Shardy's rule: only the batch dim may be sharded; the kernel gradient
  reduces over it."""
  del out_dtype, mesh, operand_types, result_types
  n = len(geometry[0])
  x = " ".join(f"x{i}" for i in range(n))
  y = " ".join(f"y{i}" for i in range(n))
  k = " ".join(f"k{i}" for i in range(n))
  rule = {FORWARD: f"b {x} c, {k} c o -> b {y} o",
          BACKWARD_DATA: f"b {y} o, {k} c o -> b {x} c",
          BACKWARD_WEIGHTS: f"b {x} c, b {y} o -> {k} c o"}[target]
  return batch_only_rule(rule, reduced=target == BACKWARD_WEIGHTS)


def batch_only_rule(rule: str, reduced: bool = False):
  """Shardy's (rule, factors) for a custom call whose only shardable factor
  is the batch `b` (also max_pool_native's): every other factor needs
  replication; `reduced`: the result sums over `b`."""
  return split_rule(rule, ("b",), ("b",) if reduced else ())


def split_rule(rule: str, splittable, reduced=()):
  """Shardy's (rule, factors) where only the factors in `splittable` may be
  sharded (every other one needs replication) and the result sums over
  those in `reduced` (also onednn_dense's)."""
  # Shardy wants the factors in the order they first appear in the rule.
  order = list(dict.fromkeys(rule.replace(",", " ").replace("->", " ").split()))
  factors = {"need_replication_factors": tuple(
      f for f in order if f not in splittable)}
  if reduced:
    factors["reduction_factors"] = tuple(reduced)
  return rule, factors


_call.def_partition(partition=_partition,
                    infer_sharding_from_operands=_infer_sharding,
                    sharding_rule=_sharding_rule)


@functools.lru_cache(maxsize=None)
def pass_call(target: str, geometry: Geometry, out_dtype: str):
  """One pass as a function of its two operands that vmap can batch.

  (custom_partitioning has no batching rule.) Members vmapped over the
  activations with a shared kernel fold into the batch: one call. Anything
  else (per-member kernels, or the kernel gradient, which must stay per
  member) runs the members one after another with lax.map.
  """

  @custom_batching.custom_vmap
  def run(a, b):
    return _call(target, geometry, out_dtype, a, b)

  @run.def_vmap
  def _rule(axis_size, in_batched, a, b):
    a_batched, b_batched = in_batched
    if a_batched and not b_batched and target != BACKWARD_WEIGHTS:
      out = run(a.reshape(axis_size * a.shape[1], *a.shape[2:]), b)
      return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
    if not a_batched:
      a = jnp.broadcast_to(a, (axis_size, *a.shape))
    if not b_batched:
      b = jnp.broadcast_to(b, (axis_size, *b.shape))
    return lax.map(lambda ab: run(*ab), (a, b)), True

  return run
