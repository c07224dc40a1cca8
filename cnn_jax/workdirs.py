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
A workdir that holds results but no complete checkpoint is refused.
"""

import json
import os


class WorkdirInUseError(RuntimeError):
  """The workdir holds another run's results."""


class ConfigMismatchError(ValueError):
  """The config would change the run stored in the workdir's checkpoint."""


# Files whose presence means a run already wrote results here.
RESULT_FILES = ("summary.json", "metrics.jsonl", "checkpoints")

# Config keys (and sections) a resumed run may change: they decide what is
# logged, evaluated and saved, not what is trained. Besides these,
# train.num_epochs may grow (the learning-rate schedule is then recomputed for
# the new length).
RESUMABLE_KEYS = ("train.log_every_steps", "train.eval_every_epochs",
                  "train.stop_after_steps", "checkpoint")


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
    True to resume from the latest checkpoint, False for a fresh run.
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
    raise WorkdirInUseError(
        f"workdir {workdir!r} already holds a run ({', '.join(existing)}) "
        "with no complete checkpoint to resume from; choose a new --workdir "
        "(results are never overwritten)")
  os.makedirs(workdir, exist_ok=True)
  return False


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
  if previous is not None and previous.get("status") == "finished":
    kept = os.path.join(workdir, f"summary.step{previous['steps']}.json")
    if os.path.exists(kept):
      raise WorkdirInUseError(f"cannot keep {path} as {kept}: it exists")
    os.rename(path, kept)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
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
