"""The run folder: created if new, resumed if unfinished; results are never
overwritten.

A workdir is in one of three states:
  * new (or empty): a fresh run starts;
  * unfinished (no summary.json, or one with status 'preempted'/'diverged')
    with a complete checkpoint: the run resumes from it;
  * finished (summary.json with status 'finished'): refused, unless the
    config is the same but for a larger config.train.num_epochs (and the
    keys in RESUMABLE_KEYS): that continues the run from its final
    checkpoint, and its summary.json is kept as summary.step<N>.json.
A workdir that holds results but no complete checkpoint (an attempt killed
before its first checkpoint was written) starts again from step 0 if its
saved config (config.json, written when a run starts, and summary.json's) is
the same run; otherwise it is refused.
"""

import contextlib
import errno
import json
import os


class WorkdirInUseError(RuntimeError):
  """The workdir holds another run's results."""


class WorkdirError(RuntimeError):
  """The workdir cannot be created or written: a file where a folder should
  be, no permission, a read-only or full file system."""


@contextlib.contextmanager
def writing(workdir, path=None):
  """An OSError raised inside becomes a WorkdirError naming `workdir` and
  the path that failed (the error's, else `path`, else `workdir`), e.g.
  "cannot write the workdir 'runs/x/y': Not a directory: 'runs/x'"."""
  try:
    yield
  except OSError as e:
    culprit = repr(e.filename if e.filename is not None else path or workdir)
    if e.filename2 is not None:
      culprit += f" -> {e.filename2!r}"
    # makedirs of a path that is a file raises "File exists".
    reason = ("a file, not a folder" if isinstance(e, FileExistsError)
              else e.strerror or str(e))
    raise WorkdirError(f"cannot write the workdir {workdir!r}: {reason}: "
                       f"{culprit}") from e


def check_writable(workdir):
  """Raises WorkdirError if the folder `workdir` cannot take new files: a
  read-only file system, no permission, or a full disk. Called before a run
  writes into an existing workdir, so that such a workdir is left as it was
  (not with some of the run's files begun in it). A `workdir` that does not
  exist is not checked: creating it fails if it cannot be written."""
  if not os.path.isdir(workdir):
    return
  stats = os.statvfs(workdir)
  # Root may also fill the blocks reserved for it. (Some file systems
  # report no blocks at all: not checked.)
  free = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
  for failed, code in ((stats.f_flag & os.ST_RDONLY, errno.EROFS),
                       (not os.access(workdir, os.W_OK | os.X_OK),
                        errno.EACCES),
                       (stats.f_blocks > 0 and free == 0, errno.ENOSPC)):
    if failed:
      raise WorkdirError(f"cannot write the workdir {workdir!r}: "
                         f"{os.strerror(code)}: {workdir!r}")


class ConfigMismatchError(ValueError):
  """The config would change the run stored in the workdir's checkpoint."""


# The config a run started with, written before its first step.
CONFIG_FILE = "config.json"

# Files whose presence means a run already wrote results here.
RESULT_FILES = ("summary.json", "metrics.jsonl", "checkpoints", CONFIG_FILE)

# Config keys (and sections) a resumed run may change: they decide what is
# logged, evaluated and saved, not what is trained. Besides these,
# train.num_epochs may grow (the learning-rate schedule is then recomputed for
# the new length).
# (mesh: the state is replicated, so a run resumes on any device count;
# float sums then run in another order, so not bitwise as on the same count.)
# data.workers and data.prefetch: the Grain pipeline's batches do not depend
# on them (data/grain_pipeline.py).
RESUMABLE_KEYS = ("train.log_every_steps", "train.eval_every_epochs",
                  "train.stop_after_steps", "train.compilation_cache",
                  "train.cpu_malloc",
                  "checkpoint", "mesh", "data.workers", "data.prefetch")


def read_summary(workdir):
  """The run's summary.json as a dict, or None if there is none."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def prepare(workdir, config, checkpoint_steps=()):
  """Creates `workdir`, or checks that the run in it may be resumed.

  Args:
    workdir: the run folder.
    config: the run's config.
    checkpoint_steps: steps of the complete checkpoints in `workdir`.
  Returns:
    True to resume from the latest checkpoint, False to start at step 0: a
    fresh run, or the same run again after an attempt that died before its
    first complete checkpoint (its records stay in metrics.jsonl; the
    caller marks them superseded).
  Raises:
    WorkdirInUseError: the workdir holds results that must not be touched.
  """
  summary = read_summary(workdir)
  if summary is not None and summary.get("status") == "finished":
    differences = config_differences(summary["config"], config.to_dict())
    longer = config.train.num_epochs > summary["epochs"]
    if checkpoint_steps and longer and not differences:
      return True
    raise WorkdirInUseError(
        f"workdir {workdir!r} already holds a run (finished, "
        f"{summary['epochs']} epochs; summary.json); choose a new --workdir "
        "(results are never overwritten), or continue it with the same "
        "config and a larger --config.train.num_epochs"
        + (f" (the config differs in: {'; '.join(differences)})"
           if differences else ""))
  if checkpoint_steps:
    return True
  existing = [f for f in RESULT_FILES
              if os.path.exists(os.path.join(workdir, f))]
  if existing:
    # No complete checkpoint: the same run starts again from step 0, keeping
    # what the dead attempt wrote; another run is refused.
    differences = list(dict.fromkeys(
        difference for saved in saved_configs(workdir, summary)
        for difference in config_differences(saved, config.to_dict())))
    if differences:
      raise WorkdirInUseError(
          f"workdir {workdir!r} already holds a run ({', '.join(existing)}) "
          "with no complete checkpoint, started with another config (it "
          f"differs in: {'; '.join(differences)}); rerun with its values to "
          "start it again, or choose a new --workdir (results are never "
          "overwritten)")
  with writing(workdir):
    os.makedirs(workdir, exist_ok=True)
  return False


def saved_configs(workdir, summary=None):
  """The config dicts saved in `workdir` without a checkpoint: config.json's
  (the run's start) and `summary`'s (its last attempt), where they exist."""
  configs = []
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      configs.append(json.load(f))
  if summary is not None and "config" in summary:
    configs.append(summary["config"])
  return configs


def write_config(workdir, config):
  """Writes config.json, the config the run starts training with (after its
  data loaded: a run that failed before leaves an empty workdir), unless it
  exists (a resumed or restarted run keeps the first). Renamed into place,
  so a kill leaves no half-written file."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    return
  with writing(workdir, path):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(config.to_dict(), f, indent=2)
    os.replace(path + ".tmp", path)


def flatten(tree, prefix=""):
  """{'a': {'b': 1}} -> {'a.b': 1}: a nested config dict by dotted keys."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _resumable(key):
  return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


# Config keys added after checkpoints were first written, with the value that
# reproduces the older behaviour: a checkpoint without the key resumes when
# the current config holds that value.
ADDED_KEY_DEFAULTS = {"train.steps_per_call": 1}


def config_differences(saved, current):
  """'key: saved -> current' for each key of the config dicts `saved` and
  `current` that differs in a way that changes the run."""
  # JSON round trip: the saved config came back from JSON (tuples as lists).
  saved = flatten(json.loads(json.dumps(saved)))
  current = flatten(json.loads(json.dumps(current)))
  missing = object()
  differences = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key, missing), current.get(key, missing)
    if old is missing and key in ADDED_KEY_DEFAULTS:
      old = ADDED_KEY_DEFAULTS[key]  # saved before the key existed
    if old == new or _resumable(key):
      continue
    if key == "train.num_epochs" and old is not missing and (
        new is not missing and new > old):
      continue
    show = lambda v: "(absent)" if v is missing else repr(v)
    differences.append(f"{key}: {show(old)} -> {show(new)}")
  return differences


def check_resumable(saved_config, config, step=None):
  """Raises ConfigMismatchError listing the keys in which `config` (a
  ConfigDict) differs from the checkpoint's `saved_config` (a dict) in a way
  that changes the run."""
  differences = config_differences(saved_config, config.to_dict())
  if differences:
    where = "" if step is None else f" of step {step}"
    raise ConfigMismatchError(
        f"the config differs from the checkpoint{where} in keys that change "
        f"the run: {'; '.join(differences)}. Rerun with the checkpoint's "
        "values, or choose a new --workdir")


def write_summary(workdir, summary):
  """Writes summary.json. A finished run's summary.json is results: it is
  kept as summary.step<N>.json, never overwritten."""
  path = os.path.join(workdir, "summary.json")
  previous = read_summary(workdir)
  with writing(workdir, path):
    if previous is not None and previous.get("status") == "finished":
      kept = os.path.join(workdir, f"summary.step{previous['steps']}.json")
      if os.path.exists(kept):
        raise WorkdirInUseError(f"cannot keep {path} as {kept}: it exists")
      os.rename(path, kept)
    # Renamed into place: a full disk or a kill never leaves half a file.
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
  return path


def new_result_path(workdir, *names):
  """The first of `names` not yet in `workdir` (results are never
  overwritten); WorkdirInUseError if all exist."""
  for name in names:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      return path
  raise WorkdirInUseError(
      f"workdir {workdir!r} already holds {', '.join(names)}; delete one to "
      "write it again")
