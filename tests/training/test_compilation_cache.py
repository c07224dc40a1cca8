"""The persistent compilation cache of launch.py's runs
(cnn_jax/training/compilation_cache.py): where it is, how it is turned off,
and that a second run compiles nothing and trains bitwise the same."""

import json
import os

import chex
import jax
import pytest

from cnn_jax.training import compilation_cache
from tests import tiny_run


@pytest.fixture
def no_user_cache(monkeypatch):
  """No cache folder set by the environment or by jax.config."""
  for name in ("CNN_JAX_COMPILATION_CACHE", "CNN_JAX_CACHE_DIR",
               "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  yield monkeypatch
  jax.config.update("jax_compilation_cache_dir", previous)


def test_where_the_cache_is(no_user_cache, tmp_path):
  monkeypatch = no_user_cache
  home = os.path.expanduser("~")
  assert compilation_cache.resolve("auto") == os.path.join(
      home, ".cache", "cnn_jax", "jax_compilation")
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path / "c"))
  assert compilation_cache.resolve("auto") == str(
      tmp_path / "c" / "jax_compilation")
  monkeypatch.setenv("CNN_JAX_COMPILATION_CACHE", str(tmp_path / "j"))
  assert compilation_cache.resolve("auto") == str(tmp_path / "j")
  # A folder named in the config wins over the environment.
  assert compilation_cache.resolve(str(tmp_path / "k")) == str(tmp_path / "k")
  # Off with one setting, in the config or the environment.
  assert compilation_cache.resolve("off") is None
  monkeypatch.setenv("CNN_JAX_COMPILATION_CACHE", "off")
  assert compilation_cache.resolve("auto") is None
  with pytest.raises(ValueError, match="config.train.compilation_cache"):
    compilation_cache.resolve(3)


def test_an_unwritable_folder(no_user_cache, tmp_path):
  blocked = tmp_path / "file"
  blocked.write_text("not a folder")
  # Named in the config: an error naming the key and the folder.
  with pytest.raises(ValueError, match="compilation_cache.*file"):
    compilation_cache.enable(str(blocked / "cache"))
  # The default place: the run goes on without the cache.
  no_user_cache.setenv("CNN_JAX_CACHE_DIR", str(blocked))
  assert compilation_cache.enable("auto") is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_folder_set_in_jax_is_kept(no_user_cache, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert compilation_cache.resolve("auto") is None
  assert compilation_cache.enable("auto") == str(tmp_path / "mine")


# Counts the persistent cache's hits and misses of the launch.py process.
_COUNT_CACHE_EVENTS = """
import atexit, collections
import jax.monitoring
_events = collections.Counter()
jax.monitoring.register_event_listener(
    lambda event, **kwargs: _events.update([event]))
atexit.register(lambda: print(
    "cache hits", _events["/jax/compilation_cache/cache_hits"],
    "misses", _events["/jax/compilation_cache/cache_misses"], flush=True))
"""


def _hits_and_misses(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("cache hits")][-1]
  words = line.split()
  return int(words[2]), int(words[4])


def test_second_run_compiles_nothing_and_trains_the_same(tiny_run_data,
                                                         tmp_path):
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "CNN_JAX_COMPILATION_CACHE")}
  # One epoch (8 steps) of the tiny run, 2 steps per call: the oneDNN
  # convolutions (custom calls) on this CPU are in the cached programs.
  overrides = {"train.num_epochs": 1, "train.steps_per_call": 2}
  flag = f"--config.train.compilation_cache={cache}"
  runs = []
  for name in ("first", "second"):
    workdir = tmp_path / name
    result = tiny_run.launch(workdir, tiny_run_data, overrides, flag,
                             env=env, hook=_COUNT_CACHE_EVENTS)
    assert result.returncode == 0, result.stderr[-3000:]
    runs.append((workdir, _hits_and_misses(result.stdout),
                 sorted(f for f in os.listdir(cache) if f.endswith("-cache"))))
  (first, (hits1, misses1), entries1), (second, (hits2, misses2),
                                        entries2) = runs
  # (A program compiled twice in one process is a hit the second time.)
  assert misses1 > 0 and len(entries1) == misses1
  # The same compile requests, every one answered from the cache.
  assert (hits2, misses2) == (hits1 + misses1, 0)
  assert entries2 == entries1
  # Bitwise the same training: checkpointed state, losses, test metrics.
  run_config = tiny_run.config(tiny_run_data, overrides)
  chex.assert_trees_all_equal(
      tiny_run.arrays(first, tiny_run.STEPS_PER_EPOCH, run_config),
      tiny_run.arrays(second, tiny_run.STEPS_PER_EPOCH, run_config))
  assert tiny_run.metrics(first) == tiny_run.metrics(second)
  summaries = [json.loads((w / "summary.json").read_text())
               for w in (first, second)]
  assert summaries[0]["test_metrics"] == summaries[1]["test_metrics"]
