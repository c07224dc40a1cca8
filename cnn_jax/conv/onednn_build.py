"""Builds and loads cnn_jax's native CPU kernels as XLA:CPU custom calls:
the oneDNN convolutions (native/onednn_conv.cc; cnn_jax/conv/onednn.py is
the JAX side), the oneDNN matmul (native/onednn_matmul.cc;
cnn_jax/conv/onednn_dense.py) and the max-pooling kernels
(native/max_pool.cc; cnn_jax/conv/max_pool_native.py), one library.

Requirements, checked on first use (`unavailable_reason()` says which one is
missing; conv_impl 'auto' then keeps XLA's convolutions):
  * Linux x86-64 and the oneDNN wheels `onednn-cpu-gomp` and
    `onednn-devel-cpu-gomp` (setup.cfg installs them there), or a oneDNN
    install named by CNN_JAX_ONEDNN_ROOT (with include/ and lib/);
  * a C++17 compiler (`$CXX`, else g++), and jaxlib's FFI headers;
  * CNN_JAX_ONEDNN not set to 0 (set it to 0 to turn this path off).
The compiled library is cached under $CNN_JAX_CACHE_DIR (default
~/.cache/cnn_jax), keyed by the source, jaxlib and oneDNN, so the ~5 s
compile happens once per machine.

  python -m cnn_jax.conv   # builds if needed, says if it is in use, verdicts
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
from typing import Optional, Tuple

from absl import logging
import jax

_NATIVE = pathlib.Path(__file__).parent / "native"
_SOURCES = (_NATIVE / "onednn_conv.cc", _NATIVE / "onednn_matmul.cc",
            _NATIVE / "max_pool.cc", _NATIVE / "conv_pool.cc",
            _NATIVE / "winograd.cc")
# Read by the sources (part of the build key, not compiled on their own).
_HEADERS = (_NATIVE / "onednn_runtime.h", _NATIVE / "avx512_lanes.h")
# XLA target name -> the symbol native/*.cc export for it.
FORWARD = "cnn_onednn_conv_fwd"
BACKWARD_DATA = "cnn_onednn_conv_bwd_data"
BACKWARD_WEIGHTS = "cnn_onednn_conv_bwd_weights"
MATMUL = "cnn_onednn_matmul"
MAX_POOL_FORWARD = "cnn_max_pool_fwd"
MAX_POOL_BACKWARD = "cnn_max_pool_bwd"
MAX_POOL_BIAS_RELU = "cnn_max_pool_bias_relu"
MAX_POOL_BIAS_RELU_BACKWARD = "cnn_max_pool_bias_relu_bwd"
CONV_MAX_POOL_FORWARD = "cnn_conv_max_pool_fwd"
CONV_MAX_POOL_BACKWARD = "cnn_conv_max_pool_bwd"
WINOGRAD_INPUT_TILES = "cnn_winograd_input_tiles"
WINOGRAD_INPUT_TILES_T = "cnn_winograd_input_tiles_t"
WINOGRAD_OUTPUT_TILES = "cnn_winograd_output_tiles"
WINOGRAD_OUTPUT_TILES_T = "cnn_winograd_output_tiles_t"
_SYMBOLS = {
    FORWARD: "CnnOnednnConvForward",
    BACKWARD_DATA: "CnnOnednnConvBackwardData",
    BACKWARD_WEIGHTS: "CnnOnednnConvBackwardWeights",
    MATMUL: "CnnOnednnMatmul",
    MAX_POOL_FORWARD: "CnnMaxPoolForward",
    MAX_POOL_BACKWARD: "CnnMaxPoolBackward",
    MAX_POOL_BIAS_RELU: "CnnMaxPoolBiasRelu",
    MAX_POOL_BIAS_RELU_BACKWARD: "CnnMaxPoolBiasReluBackward",
    CONV_MAX_POOL_FORWARD: "CnnConvMaxPoolForward",
    CONV_MAX_POOL_BACKWARD: "CnnConvMaxPoolBackward",
    WINOGRAD_INPUT_TILES: "CnnWinogradInputTiles",
    WINOGRAD_INPUT_TILES_T: "CnnWinogradInputTilesT",
    WINOGRAD_OUTPUT_TILES: "CnnWinogradOutputTiles",
    WINOGRAD_OUTPUT_TILES_T: "CnnWinogradOutputTilesT",
}


class Unavailable(RuntimeError):
  """Why the oneDNN convolutions cannot be built or loaded here."""


def onednn_root() -> pathlib.Path:
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


def cache_dir() -> pathlib.Path:
  """cnn_jax's cache folder: $CNN_JAX_CACHE_DIR, else
  $XDG_CACHE_HOME/cnn_jax or ~/.cache/cnn_jax (also the compilation
  cache's parent, training/compilation_cache.py)."""
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
  key = hashlib.sha256(b"\0".join([
      *(source.read_bytes() for source in _SOURCES + _HEADERS),
      jax.lib.__version__.encode(), str(library.resolve()).encode(),
      str(library.stat().st_size).encode(), compiler.encode()])).hexdigest()
  target = cache_dir() / "native" / f"cnn_jax_native-{key[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  # Compiled to a temporary name and renamed: concurrent processes never see
  # (or load) a half-written library.
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    out = pathlib.Path(tmp) / target.name
    # -O3 vectorises the pooling loops; -fopenmp threads them on the same
    # OpenMP runtime (libgomp) as this oneDNN build.
    command = [
        compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
        *(str(source) for source in _SOURCES), "-o", str(out),
        f"-I{root / 'include'}",
        f"-I{ffi_include}", str(library), f"-Wl,-rpath,{library.parent}"]
    result = subprocess.run(command, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
      raise Unavailable(f"compiling {_NATIVE}'s kernels failed "
                        f"({' '.join(command)}):\n{result.stderr[-2000:]}")
    os.replace(out, target)
  logging.info("Compiled the native kernels to %s in %.1f s", target,
               time.perf_counter() - start)
  return target


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ctypes.CDLL], Optional[pathlib.Path],
                     Optional[str]]:
  """Builds, loads and registers the custom calls once: (the library, its
  path, None), or (None, None, why not)."""
  if os.environ.get("CNN_JAX_ONEDNN", "1").lower() in ("0", "false", "off"):
    return None, None, "turned off by CNN_JAX_ONEDNN=0"
  if platform.system() != "Linux" or platform.machine() not in ("x86_64",
                                                                 "AMD64"):
    return None, None, (f"oneDNN path is built for Linux x86-64, not "
                        f"{platform.system()} {platform.machine()}")
  try:
    path = _compile(onednn_root())
    library = ctypes.CDLL(str(path))
  except (Unavailable, OSError) as e:
    logging.warning("oneDNN convolutions unavailable, XLA's run instead "
                    "(slower on the CPU): %s", e)
    return None, None, str(e)
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  library.CnnOnednnCpuIsa.restype = ctypes.c_char_p
  library.CnnOnednnRunPass.restype = ctypes.c_int
  return library, path, None


def library() -> ctypes.CDLL:
  """The loaded custom-call library (its C functions CnnOnednnCpuIsa and
  CnnOnednnRunPass serve onednn_verify); raises Unavailable if it is not."""
  loaded, _, reason = _load()
  if loaded is None:
    raise Unavailable(reason)
  return loaded


def library_path() -> pathlib.Path:
  """The compiled library's path in the cache (its name holds the build
  key, so the verdicts filed beside it belong to this build)."""
  library()
  return _load()[1]


def cpu_isa() -> str:
  """The instruction set oneDNN dispatches to here, e.g. 'avx2' or
  'avx512_core_amx' (ONEDNN_MAX_CPU_ISA lowers it)."""
  return library().CnnOnednnCpuIsa().decode()


def unavailable_reason() -> Optional[str]:
  """None if the oneDNN convolutions are ready, else why not (builds them
  on the first call)."""
  return _load()[2]


def available() -> bool:
  return unavailable_reason() is None
