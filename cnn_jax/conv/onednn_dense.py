"""Dense layers multiplied by oneDNN in bfloat16 on the CPU.

XLA:CPU multiplies float32 whatever JAX's matmul precision asks for, and its
bfloat16 dots run slower than its float32 ones. Where a network's matmul
precision is bfloat16 (config.train.matmul_precision, as for its
convolutions, onednn.py) or its dense layers are bfloat16, and oneDNN has
bf16 dot-product instructions here (onednn_bfloat16.bfloat16_native), a
dense layer's three products (y = x w, dx = dy w^T, dw = x^T dy) run as
oneDNN matmuls (native/onednn_matmul.cc): bfloat16 operands, float32 sums.
The MNIST CNN's 3136->256 layer at batch 256 (2-core AMD EPYC Zen 4):
forward and both gradients 8.7 ms against XLA's float32 11.3 ms; the bf16
train step 0.92x its time (median of 8 alternated pairs of processes;
README "Matmul precision bfloat16").

`dot_general` has `lax.dot_general`'s signature: it is what `layers.Dense`
hands to flax's nn.Dense, so parameters keep nn.Dense's layout. It takes
the product of a dense layer, x [..., K] with a kernel [K, N], large enough
to gain (`MIN_FLOPS`); anything else runs `lax.dot_general`.

Results: a float32 layer's output and kernel gradient are float32 sums of
bfloat16 products; its input gradient is rounded to bfloat16 once, as the
convolutions' is (it is the large one: it feeds the bfloat16 pooling
gradient of layers.ConvReluMaxPool, where that rounding changes no value).
A bfloat16 layer's results are bfloat16, as XLA's would be. Differentiable
in reverse mode to any order (each product's VJP is made of the other two);
under vmap, members that share the kernel fold into the rows, others run as
one batched matmul; under data parallelism each device multiplies its shard
of the batch (the kernel gradient sums the shards').
"""

import functools
import math
from typing import Optional

import jax
from jax import custom_batching
from jax import lax
from jax.experimental import custom_partitioning
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_calls

# Below this many flops a product stays in XLA: a custom call's fixed cost
# (and the casts) outweigh the gain on a small head (256x256 by 256x10).
MIN_FLOPS = 2**24

# The three products of y = x w (x [M, K], w [K, N]) and the transposes the
# custom call applies to its two operands.
FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT = "forward", "input", "kernel"
_TRANSPOSES = {FORWARD: (0, 0),          # (x, w) -> x w
               INPUT_GRADIENT: (0, 1),   # (dy, w) -> dy w^T
               KERNEL_GRADIENT: (1, 0)}  # (x, dy) -> x^T dy


def unusable_reason(lhs_shape, rhs_shape, dimension_numbers, dtype,
                    precision=None, backend: Optional[str] = None
                    ) -> Optional[str]:
  """None if `dot_general` runs this product on oneDNN, else why not."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (len(rhs_shape) != 2 or len(lhs_shape) < 1 or lhs_batch or rhs_batch
      or tuple(lhs_contract) != (len(lhs_shape) - 1,)
      or tuple(rhs_contract) != (0,)):
    return "not a dense layer's product (x [..., K] with a kernel [K, N])"
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return f"backend {backend} (oneDNN runs on the CPU)"
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    if not onednn_bfloat16.bfloat16_requested(precision):
      return "float32 precision (XLA's float32 dots are the faster ones)"
  elif dtype != jnp.bfloat16:
    return f"dtype {dtype.name} (oneDNN path: float32, bfloat16)"
  flops = 2 * math.prod(lhs_shape) * rhs_shape[1]
  if flops < MIN_FLOPS:
    return f"{flops} flops (< {MIN_FLOPS}: XLA's is as fast)"
  reason = onednn_build.unavailable_reason()
  if reason is not None:
    return reason
  if not onednn_bfloat16.bfloat16_native():
    return (f"oneDNN has no bf16 instructions here "
            f"({onednn_build.cpu_isa()})")
  return None


def _local_product(role: str, out_dtype: str, a, b):
  """The custom call: op(a) op(b) with role's transposes, rank 2 or 3 (a
  leading batch dim, size 1 in an operand that broadcasts)."""
  ta, tb = _TRANSPOSES[role]
  rows = a.shape[-1] if ta else a.shape[-2]
  cols = b.shape[-2] if tb else b.shape[-1]
  batch = (max(a.shape[0], b.shape[0]),) if a.ndim == 3 else ()
  return jax.ffi.ffi_call(
      onednn_build.MATMUL,
      jax.ShapeDtypeStruct((*batch, rows, cols), out_dtype))(
          a, b, transpose_a=np.int64(ta), transpose_b=np.int64(tb))


# Data parallelism: the rows of x, dy (the batch, M) split across devices;
# the kernel is replicated. The forward and input-gradient products are per
# row; the kernel gradient contracts over the rows, so it sums the shards'.
# A vmap's leading batch dim may be split too.
def _factors(role, a_shape, b_shape):
  """Each operand's dims as factor names: s (vmap batch, 'u' where the
  operand broadcasts it), m (rows, the data batch), k, n."""
  labels = {FORWARD: ("m k", "k n", "m n"),
            INPUT_GRADIENT: ("m n", "k n", "m k"),
            KERNEL_GRADIENT: ("m k", "m n", "k n")}[role]
  if len(a_shape) == 2:
    return labels
  batch = max(a_shape[0], b_shape[0])
  prefix = lambda shape: "s " if shape[0] == batch else "u "
  return (prefix(a_shape) + labels[0], prefix(b_shape) + labels[1],
          "s " + labels[2])


def _spec(labels: str, axes):
  return jax.sharding.PartitionSpec(*(axes.get(f) for f in labels.split()))


def _split_axes(role, mesh, arg_shapes):
  """The mesh axes splitting s and m, as the operands arrive (the first
  operand's, which has m, unless only the second has s)."""
  del mesh
  labels = _factors(role, arg_shapes[0].shape, arg_shapes[1].shape)
  axes = {}
  for operand, names in zip(arg_shapes, labels):
    spec = tuple(getattr(operand.sharding, "spec", None) or ())
    for name, axis in zip(names.split(), spec):
      if name in ("s", "m") and axis is not None:
        axes.setdefault(name, axis)
  return axes


def _shardings(role, mesh, arg_shapes):
  axes = _split_axes(role, mesh, arg_shapes)
  a_labels, b_labels, c_labels = _factors(role, arg_shapes[0].shape,
                                          arg_shapes[1].shape)
  named = lambda labels: jax.sharding.NamedSharding(mesh,
                                                    _spec(labels, axes))
  return axes, named(c_labels), (named(a_labels), named(b_labels))


def _infer(role, out_dtype, mesh, arg_shapes, result_shape):
  del out_dtype, result_shape
  return _shardings(role, mesh, arg_shapes)[1]


def _partition(role, out_dtype, mesh, arg_shapes, result_shape):
  del result_shape
  axes, result, operands = _shardings(role, mesh, arg_shapes)

  def lower(a, b):
    c = _local_product(role, out_dtype, a, b)
    if role == KERNEL_GRADIENT and axes.get("m") is not None:
      c = lax.psum(c, axes["m"])
    return c

  return mesh, lower, result, operands


def _sharding_rule(role, out_dtype, mesh, operand_types, result_types):
  """Shardy's rule: only s and m may be split; the kernel gradient sums
  over m."""
  del out_dtype, mesh, result_types
  a, b, c = _factors(role, operand_types[0].shape, operand_types[1].shape)
  return onednn_calls.split_rule(
      f"{a}, {b} -> {c}", ("s", "m"),
      ("m",) if role == KERNEL_GRADIENT else ())


_product_call = custom_partitioning.custom_partitioning(
    _local_product, static_argnums=(0, 1))
_product_call.def_partition(partition=_partition,
                            infer_sharding_from_operands=_infer,
                            sharding_rule=_sharding_rule)


def _as_batched(t, batched: bool, axis_size: int, inner: int):
  """An operand as [batch, rows, cols]: batch 1 where it is the same for
  every member (oneDNN broadcasts it), else axis_size * inner."""
  own_inner = t.shape[-3] if t.ndim - batched == 3 else 1
  if not batched and own_inner == 1:
    return t.reshape(1, *t.shape[-2:])
  if not batched:
    t = jnp.broadcast_to(t, (axis_size, *t.shape))
  if t.ndim == 3:  # [S, rows, cols]
    t = t[:, None]
  t = jnp.broadcast_to(t, (axis_size, inner, *t.shape[-2:]))
  return t.reshape(axis_size * inner, *t.shape[-2:])


@functools.lru_cache(maxsize=None)
def _product(role: str, out_dtype: str):
  """One product as a function of its two operands that vmap can batch."""

  @custom_batching.custom_vmap
  def run(a, b):
    return _product_call(role, out_dtype, a, b)

  @run.def_vmap
  def _rule(axis_size, in_batched, a, b):
    a_batched, b_batched = in_batched
    if a_batched and not b_batched and b.ndim == 2 and role != (
        KERNEL_GRADIENT):
      # A kernel shared by every member: one product over all their rows.
      out = run(a.reshape(-1, a.shape[-1]), b)
      return out.reshape(*a.shape[:-1], out.shape[-1]), True
    # Under nested vmaps an operand may carry an inner batch dim already.
    inners = [t.shape[-3] for t, batched in zip((a, b), in_batched)
              if t.ndim - batched == 3]
    inner = max(inners, default=1)
    out = run(_as_batched(a, a_batched, axis_size, inner),
              _as_batched(b, b_batched, axis_size, inner))
    shape = (axis_size, inner) if inners else (axis_size,)
    return out.reshape(*shape, *out.shape[-2:]), True

  return run


def _result_dtype(role: str, compute: str, operand_dtype) -> str:
  """float32 sums for a float32 layer's output and kernel gradient; its
  input gradient, and every result of a bfloat16 layer, in bfloat16."""
  if compute == "bfloat16" and jnp.dtype(operand_dtype) == jnp.float32 and (
      role != INPUT_GRADIENT):
    return "float32"
  return compute


def _call(role, a, b, compute, dtype):
  out = _product(role, _result_dtype(role, compute, dtype))(
      a.astype(compute), b.astype(compute))
  return out.astype(dtype)


# Each product is linear in each operand and its VJP is made of the other
# two, so reverse mode works to any order. `dtype`: the layer's (float32 or
# bfloat16), the dtype of every result and cotangent; `compute`: bfloat16
# for dense layers, float32 for `batched_matmul`. Residuals are the
# operands' casts to `compute`.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _forward(x, w, compute, dtype):
  return _call(FORWARD, x, w, compute, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _input_gradient(dy, w, compute, dtype):
  return _call(INPUT_GRADIENT, dy, w, compute, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_gradient(x, dy, compute, dtype):
  return _call(KERNEL_GRADIENT, x, dy, compute, dtype)


def _vjp_forward_rule(product):
  def rule(a, b, compute, dtype):
    return product(a, b, compute, dtype), (a.astype(compute),
                                           b.astype(compute))
  return rule


def _forward_bwd(compute, dtype, residuals, dy):
  x, w = residuals
  return (_input_gradient(dy, w, compute, dtype),
          _kernel_gradient(x, dy, compute, dtype))


def _input_gradient_bwd(compute, dtype, residuals, g):
  dy, w = residuals  # dx = dy w^T
  return (_forward(g, w, compute, dtype),
          _kernel_gradient(g, dy, compute, dtype))


def _kernel_gradient_bwd(compute, dtype, residuals, g):
  x, dy = residuals  # dw = x^T dy
  return (_input_gradient(dy, g, compute, dtype),
          _forward(x, g, compute, dtype))


_forward.defvjp(_vjp_forward_rule(_forward), _forward_bwd)
_input_gradient.defvjp(_vjp_forward_rule(_input_gradient),
                       _input_gradient_bwd)
_kernel_gradient.defvjp(_vjp_forward_rule(_kernel_gradient),
                        _kernel_gradient_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None):
  """`lax.dot_general`, with a dense layer's product (x [..., K] by a
  kernel [K, N]) multiplied by oneDNN in bfloat16 where `unusable_reason`
  is None."""
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  dtype = jnp.result_type(lhs, rhs)
  if unusable_reason(lhs.shape, rhs.shape, dimension_numbers, dtype,
                     precision) is not None:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  onednn_build.library()  # built and its custom calls registered
  x = lhs.reshape(-1, lhs.shape[-1]).astype(dtype)
  y = _forward(x, rhs.astype(dtype), "bfloat16", jnp.dtype(dtype).name)
  y = y.reshape(*lhs.shape[:-1], rhs.shape[1])
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  return y


def batched_matmul(a, b):
  """a [S, M, K] @ b [S, K, N] in float32 as oneDNN matmuls: Winograd's 36
  products (winograd.py), where oneDNN's took 0.67-0.90x the time of XLA's
  batched dots for the forward and both gradients (2-core AMD EPYC Zen 4,
  ResNet-18's 16x16x128 and 8x8x256 layers at batch 128). Differentiable in
  reverse mode to any order; vmappable; data parallel over M (the kernel
  gradient sums the shards')."""
  onednn_build.library()  # built and its custom calls registered
  return _forward(a.astype(jnp.float32), b.astype(jnp.float32), "float32",
                  "float32")
