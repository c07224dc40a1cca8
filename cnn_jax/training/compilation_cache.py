"""JAX's persistent compilation cache for the runs launch.py starts.

Every run compiles the same handful of programs (train call, evaluation,
initialisation, normalisation statistics); with the cache on, a repeated or
resumed run loads them from disk instead of compiling them again. What is
cached is XLA's compiled executable, so results are bitwise those of a
compilation from scratch (tests/training/test_compilation_cache.py).

Chosen by config.train.compilation_cache:
  'auto' (default): the folder $CNN_JAX_COMPILATION_CACHE names ('off': no
    cache), else jax_compilation/ in cnn_jax's cache folder
    ($CNN_JAX_CACHE_DIR, else $XDG_CACHE_HOME/cnn_jax, else
    ~/.cache/cnn_jax: where conv/onednn_build.py keeps its library). A
    jax_compilation_cache_dir set by the user (JAX_COMPILATION_CACHE_DIR or
    jax.config) is kept as it is. If the folder cannot be written, the run
    goes on without the cache (a warning).
  'off': no persistent cache.
  any other string: that folder.

Enabled where a run starts (launch.py), never at import: a library user's
process keeps JAX's defaults. oneDNN convolutions (jax.ffi custom calls,
cnn_jax/conv/onednn.py) are cached like any other op on one device: the
custom call is named in the program, and its handler is registered again
when the next process traces the convolution. Programs sharded over
several devices miss the cache: there each oneDNN call sits inside
custom_partitioning's CustomSPMDPartitioning call, whose backend config is a
pointer to this process's Python callback, which JAX hashes into the key.
(jax_remove_custom_partitioning_ptr_from_cache_key would drop it, but the
key would then no longer tell two calls apart whose shapes agree and whose
strides or padding differ; they would share one executable.)
"""

import os

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from cnn_jax.conv import onednn_build

OFF = "off"
ENV = "CNN_JAX_COMPILATION_CACHE"
MAX_BYTES = 2 << 30


def _has_filelock():
  try:
    import filelock  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def resolve(setting):
  """The cache folder for config.train.compilation_cache = `setting` (a
  str), or None for no cache (or the user's own JAX setting, kept)."""
  if not isinstance(setting, str):
    raise ValueError(f"config.train.compilation_cache={setting!r} must be "
                     f"'auto', '{OFF}' or a folder")
  if setting != "auto":
    return None if setting.strip().lower() in (OFF, "") else setting
  if jax.config.jax_compilation_cache_dir:
    return None  # the user's own JAX setting
  named = os.environ.get(ENV, "")
  if named.strip().lower() == OFF:
    return None
  return named or str(onednn_build.cache_dir() / "jax_compilation")


def enable(setting="auto"):
  """Turns JAX's persistent compilation cache on as `setting` says (see the
  module docstring) and returns the folder in use, or None."""
  folder = resolve(setting)
  if folder is None:
    return jax.config.jax_compilation_cache_dir or None
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
    writable = os.access(folder, os.W_OK)
  except OSError:
    writable = False
  if not writable:
    message = (f"config.train.compilation_cache: cannot write to the folder "
               f"{folder!r}")
    if setting == "auto":  # the default place: the run goes on uncached
      logging.warning("%s; runs compile without the persistent cache (set "
                      "%s to another folder, or 'off')", message, ENV)
      return None
    raise ValueError(f"{message}; name another, or '{OFF}'")
  jax.config.update("jax_compilation_cache_dir", folder)
  # Every program, not only those over JAX's 1 s default: a run's small
  # programs (init, evaluation, statistics) together take seconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # A folder that every run adds to: the least recently used entries go
  # beyond MAX_BYTES (JAX's eviction locks the folder with filelock).
  if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  # JAX decides once per process whether it uses the cache: at its first
  # compilation, which may have happened already (with the cache off).
  jax_cache.reset_cache()
  return folder
