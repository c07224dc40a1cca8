"""oneDNN convolutions on the CPU, called from XLA as jax.ffi custom calls.

XLA:CPU's own convolutions are the slow part of a small CNN's train step on
a CPU (issue 12: on 2 cores a 3x3 32->64 convolution's forward, input and
kernel gradients take 8, 10 and 10+ ms at batch 128 against oneDNN's 4.6,
4.3 and 4.0 ms; oneDNN is what PyTorch runs on the CPU). This module
compiles `native/onednn_conv.cc` against the oneDNN wheel on first use and
registers its three passes (forward, input gradient, kernel gradient) as
XLA:CPU custom calls. `conv_general_dilated` here has
`lax.conv_general_dilated`'s signature and is what `conv_impl='onednn'` (and
'auto' on the CPU) runs; everything around the convolutions stays in XLA.

Requirements, checked on first use (`unavailable_reason()` says which one is
missing; 'auto' then keeps XLA's convolutions):
  * Linux x86-64 and the oneDNN wheels `onednn-cpu-gomp` and
    `onednn-devel-cpu-gomp` (setup.cfg installs them there), or a oneDNN
    install named by CNN_JAX_ONEDNN_ROOT (with include/ and lib/);
  * a C++17 compiler (`$CXX`, else g++), and jaxlib's FFI headers;
  * CNN_JAX_ONEDNN not set to 0 (set it to 0 to turn this path off).
The compiled library is cached under $CNN_JAX_CACHE_DIR (default
~/.cache/cnn_jax), keyed by the source, jaxlib and oneDNN, so the ~5 s
compile happens once per machine.

Differentiation: reverse mode, to any order (each pass's VJP is made of the
other passes); no forward mode (jvp), as with any custom VJP. Under vmap,
members that share the kernel fold into one call's batch; otherwise they run
one after another. Under data parallelism (`jax.sharding`), each device
convolves its shard of the batch.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import site
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence, Tuple

from absl import logging
import jax
from jax import custom_batching
from jax import lax
from jax.experimental import custom_partitioning
import jax.numpy as jnp
import numpy as np

from cnn_jax import conv_im2col

_SOURCE = pathlib.Path(__file__).parent / "native" / "onednn_conv.cc"
# XLA target name -> the symbol native/onednn_conv.cc exports for it.
_FORWARD = "cnn_onednn_conv_fwd"
_BACKWARD_DATA = "cnn_onednn_conv_bwd_data"
_BACKWARD_WEIGHTS = "cnn_onednn_conv_bwd_weights"
_SYMBOLS = {
    _FORWARD: "CnnOnednnConvForward",
    _BACKWARD_DATA: "CnnOnednnConvBackwardData",
    _BACKWARD_WEIGHTS: "CnnOnednnConvBackwardWeights",
}
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class Unavailable(RuntimeError):
  """Why the oneDNN convolutions cannot be built or loaded here."""


def _onednn_root() -> pathlib.Path:
  """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so*."""
  named = os.environ.get("CNN_JAX_ONEDNN_ROOT")
  # pip puts the wheels' include/ and lib/ under the environment's prefix
  # (or the user base, for `pip install --user`).
  candidates = [pathlib.Path(named)] if named else [
      pathlib.Path(p) for p in dict.fromkeys(
          (sys.prefix, sys.base_prefix, site.getuserbase()))]
  for root in candidates:
    header = root / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    if header.is_file() and _library(root) is not None:
      return root
  where = (f"CNN_JAX_ONEDNN_ROOT={named}" if named else
           " or ".join(str(c) for c in candidates))
  raise Unavailable(
      f"no oneDNN headers and library under {where} (install the wheels "
      "onednn-cpu-gomp and onednn-devel-cpu-gomp, or set CNN_JAX_ONEDNN_ROOT "
      "to a oneDNN install prefix)")


def _library(root: pathlib.Path) -> Optional[pathlib.Path]:
  for name in ("libdnnl.so.3", "libdnnl.so"):
    if (root / "lib" / name).exists():
      return root / "lib" / name
  return None


def _cache_dir() -> pathlib.Path:
  named = os.environ.get("CNN_JAX_CACHE_DIR")
  if named:
    return pathlib.Path(named)
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "cnn_jax"


def _compile(root: pathlib.Path) -> pathlib.Path:
  """The compiled custom-call library (built now if not cached)."""
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    raise Unavailable(f"no C++ compiler ({os.environ.get('CXX', 'g++')!r} "
                      "not on PATH; set CXX)")
  library = _library(root)
  ffi_include = pathlib.Path(jax.ffi.include_dir())
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([
      source, jax.lib.__version__.encode(), str(library.resolve()).encode(),
      str(library.stat().st_size).encode(), compiler.encode()])).hexdigest()
  target = _cache_dir() / "native" / f"onednn_conv-{key[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  # Compiled to a temporary name and renamed: concurrent processes never see
  # (or load) a half-written library.
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    out = pathlib.Path(tmp) / target.name
    command = [
        compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
        str(_SOURCE), "-o", str(out), f"-I{root / 'include'}",
        f"-I{ffi_include}", str(library), f"-Wl,-rpath,{library.parent}"]
    result = subprocess.run(command, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
      raise Unavailable(f"compiling {_SOURCE.name} failed "
                        f"({' '.join(command)}):\n{result.stderr[-2000:]}")
    os.replace(out, target)
  logging.info("Compiled oneDNN convolutions to %s in %.1f s", target,
               time.perf_counter() - start)
  return target


@functools.lru_cache(maxsize=None)
def _load() -> Optional[str]:
  """Builds, loads and registers the custom calls once; None, or why not."""
  if os.environ.get("CNN_JAX_ONEDNN", "1").lower() in ("0", "false", "off"):
    return "turned off by CNN_JAX_ONEDNN=0"
  if platform.system() != "Linux" or platform.machine() not in ("x86_64",
                                                                 "AMD64"):
    return (f"oneDNN path is built for Linux x86-64, not "
            f"{platform.system()} {platform.machine()}")
  try:
    library = ctypes.CDLL(str(_compile(_onednn_root())))
  except (Unavailable, OSError) as e:
    logging.warning("oneDNN convolutions unavailable, XLA's run instead "
                    "(slower on the CPU): %s", e)
    return str(e)
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return None


def unavailable_reason() -> Optional[str]:
  """None if the oneDNN convolutions are ready, else why not (builds them
  on the first call)."""
  return _load()


def available() -> bool:
  return _load() is None


def supported(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
              dimension_numbers=None, lhs_dilation=None,
              feature_group_count: int = 1, batch_group_count: int = 1,
              dtype=jnp.float32) -> Optional[str]:
  """None if this convolution can run on oneDNN, else why it cannot.

  Channels-last input/output and a [*window, C_in, C_out] kernel (flax's
  layout), 1 to 3 spatial dims, float32 or bfloat16, no input dilation or
  groups. Whether oneDNN is installed is `unavailable_reason()`'s question.
  """
  reason = conv_im2col.supported(lhs_shape, rhs_shape, dimension_numbers,
                                 lhs_dilation, feature_group_count,
                                 batch_group_count)
  if reason is not None:
    return reason
  if jnp.dtype(dtype) not in DTYPES:
    return f"dtype {jnp.dtype(dtype).name} (oneDNN path: float32, bfloat16)"
  if 0 in tuple(lhs_shape) or 0 in tuple(rhs_shape):
    return f"an empty operand ({tuple(lhs_shape)}, {tuple(rhs_shape)})"
  return None


# geometry: (in_sizes, window, strides, pads, dilations), all tuples of ints.
Geometry = Tuple[Tuple[int, ...], ...]


def _out_sizes(geometry: Geometry) -> Tuple[int, ...]:
  in_sizes, window, strides, pads, dilations = geometry
  return tuple(
      (n + lo + hi - d * (k - 1) - 1) // s + 1
      for n, k, s, (lo, hi), d in zip(in_sizes, window, strides, pads,
                                      dilations))


def _result_shape(target: str, a_shape, b_shape, geometry: Geometry):
  """The custom call's result shape from its operands' (per-device) shapes:
  forward (x, kernel) -> y, backward_data (dy, kernel) -> dx,
  backward_weights (x, dy) -> dkernel."""
  in_sizes, window = geometry[0], geometry[1]
  if target == _FORWARD:
    return (a_shape[0], *_out_sizes(geometry), b_shape[-1])
  if target == _BACKWARD_DATA:
    return (a_shape[0], *in_sizes, b_shape[-2])
  return (*window, a_shape[-1], b_shape[-1])


def _local_call(target: str, geometry: Geometry, a, b):
  _, _, strides, pads, dilations = geometry
  shape = _result_shape(target, a.shape, b.shape, geometry)
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, a.dtype))(
      a, b, strides=np.asarray(strides, np.int64),
      pads_lo=np.asarray([lo for lo, _ in pads], np.int64),
      pads_hi=np.asarray([hi for _, hi in pads], np.int64),
      dilations=np.asarray(dilations, np.int64))


# Data parallelism: without a partitioning rule, XLA's SPMD partitioner would
# gather a batch-sharded operand onto every device to run a custom call. The
# three passes are independent per example, so they run on each device's
# shard of the batch; the kernel gradient sums the shards' contributions.
_call = custom_partitioning.custom_partitioning(_local_call,
                                                static_argnums=(0, 1))


def _batch_axes(arg_shapes):
  """The mesh axes the batch (dim 0 of the first operand) is sharded over."""
  sharding = arg_shapes[0].sharding
  spec = getattr(sharding, "spec", None)
  return spec[0] if spec else None


def _shardings(target, mesh, batch):
  """(result sharding, operand shardings) for a batch sharded over `batch`."""
  by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if target == _BACKWARD_WEIGHTS:
    return replicated, (by_batch, by_batch)
  return by_batch, (by_batch, replicated)


def _infer_sharding(target, geometry, mesh, arg_shapes, result_shape):
  del geometry, result_shape
  return _shardings(target, mesh, _batch_axes(arg_shapes))[0]


def _partition(target, geometry, mesh, arg_shapes, result_shape):
  del result_shape
  batch = _batch_axes(arg_shapes)
  result_sharding, arg_shardings = _shardings(target, mesh, batch)

  def lower(a, b):
    out = _local_call(target, geometry, a, b)
    if target == _BACKWARD_WEIGHTS and batch is not None:
      out = lax.psum(out, batch)
    return out

  return mesh, lower, result_sharding, arg_shardings


def _sharding_rule(target, geometry, mesh, operand_types, result_types):
  """Shardy's rule: only the batch dim may be sharded; the kernel gradient
  reduces over it."""
  del mesh, operand_types, result_types
  n = len(geometry[0])
  x = " ".join(f"x{i}" for i in range(n))
  y = " ".join(f"y{i}" for i in range(n))
  k = " ".join(f"k{i}" for i in range(n))
  rule = {_FORWARD: f"b {x} c, {k} c o -> b {y} o",
          _BACKWARD_DATA: f"b {y} o, {k} c o -> b {x} c",
          _BACKWARD_WEIGHTS: f"b {x} c, b {y} o -> {k} c o"}[target]
  # Shardy wants the factors in the order they first appear in the rule.
  order = list(dict.fromkeys(rule.replace(",", " ").replace("->", " ").split()))
  factors = {"need_replication_factors": tuple(f for f in order if f != "b")}
  if target == _BACKWARD_WEIGHTS:
    factors["reduction_factors"] = ("b",)
  return rule, factors


_call.def_partition(partition=_partition,
                    infer_sharding_from_operands=_infer_sharding,
                    sharding_rule=_sharding_rule)


@functools.lru_cache(maxsize=None)
def _pass(target: str, geometry: Geometry):
  """One pass as a function of its two operands that vmap can batch.

  (custom_partitioning has no batching rule.) Members vmapped over the
  activations with a shared kernel fold into the batch: one call. Anything
  else (per-member kernels, or the kernel gradient, which must stay per
  member) runs the members one after another with lax.map.
  """

  @custom_batching.custom_vmap
  def run(a, b):
    return _call(target, geometry, a, b)

  @run.def_vmap
  def _rule(axis_size, in_batched, a, b):
    a_batched, b_batched = in_batched
    if a_batched and not b_batched and target != _BACKWARD_WEIGHTS:
      out = run(a.reshape(axis_size * a.shape[1], *a.shape[2:]), b)
      return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
    if not a_batched:
      a = jnp.broadcast_to(a, (axis_size, *a.shape))
    if not b_batched:
      b = jnp.broadcast_to(b, (axis_size, *b.shape))
    return lax.map(lambda ab: run(*ab), (a, b)), True

  return run


# Each pass is linear in each operand, and each one's VJP is made of the
# other two, so reverse mode works to any order.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _forward(x, kernel, geometry):
  return _pass(_FORWARD, geometry)(x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _backward_data(dy, kernel, geometry):
  return _pass(_BACKWARD_DATA, geometry)(dy, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _backward_weights(x, dy, geometry):
  return _pass(_BACKWARD_WEIGHTS, geometry)(x, dy)


def _forward_fwd(x, kernel, geometry):
  return _forward(x, kernel, geometry), (x, kernel)


def _forward_bwd(geometry, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  return (_backward_data(dy, kernel, geometry),
          _backward_weights(x, dy, geometry))


def _backward_data_fwd(dy, kernel, geometry):
  return _backward_data(dy, kernel, geometry), (dy, kernel)


def _backward_data_bwd(geometry, residuals, g):
  dy, kernel = residuals
  g = g.astype(dy.dtype)
  return _forward(g, kernel, geometry), _backward_weights(g, dy, geometry)


def _backward_weights_fwd(x, dy, geometry):
  return _backward_weights(x, dy, geometry), (x, dy)


def _backward_weights_bwd(geometry, residuals, g):
  x, dy = residuals
  g = g.astype(x.dtype)
  return _backward_data(dy, g, geometry), _forward(x, g, geometry)


_forward.defvjp(_forward_fwd, _forward_bwd)
_backward_data.defvjp(_backward_data_fwd, _backward_data_bwd)
_backward_weights.defvjp(_backward_weights_fwd, _backward_weights_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` run by oneDNN on the CPU.

  Same arguments, result and gradients (up to float summation order; float32
  is computed in full float32 whatever `precision` says). Convolutions
  oneDNN does not take (`supported`), negative padding, or a machine
  without oneDNN (`unavailable_reason`) run `lax.conv_general_dilated`.
  """
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  dtype = jnp.result_type(lhs, rhs)
  fallback = supported(lhs.shape, rhs.shape, dimension_numbers, lhs_dilation,
                       feature_group_count, batch_group_count, dtype)
  if fallback is None:
    window, strides, pads, dilations = conv_im2col.channels_last_geometry(
        lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
    if any(p < 0 for pair in pads for p in pair):
      fallback = f"negative padding {pads}"
  if fallback is None:
    fallback = unavailable_reason()
  if fallback is not None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  geometry = (tuple(lhs.shape[1:-1]), window, strides, pads, dilations)
  y = _forward(lhs.astype(dtype), rhs.astype(dtype), geometry)
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  return y


def main():
  """`python -m cnn_jax.onednn`: builds the custom calls if needed and says
  whether 'auto' will use them here."""
  reason = unavailable_reason()
  if reason is None:
    print(f"oneDNN convolutions ready (oneDNN under {_onednn_root()}); "
          "conv_impl 'auto' uses them on the CPU")
  else:
    print(f"oneDNN convolutions unavailable: {reason}")
  return 0 if reason is None else 1


if __name__ == "__main__":
  sys.exit(main())
