"""The runs a paper reports on: `--runs=label=path,...` read back, checked
finished, and grouped.

A path is a run folder (summary.json) or a sweep folder (members/<k>/); a
glob (`runs/scratch_seed*`) stands for every folder it matches. Runs given
the same label form one group: its configs must agree except for the seed
(and the data file, which a per-seed subset changes), so the group's numbers
are a mean over seeds with a Student-t interval. A sweep's members are
grouped the same way by their setting (all keys but the seed); a sweep
varying more than the seed gives one group per setting, labelled
`label (key=value, ...)`.

Errors (one line each, naming the run): a path that matches no folder, a
folder without summary.json, a run whose status is not 'finished', runs of
one label that differ in more than the seed.
"""

import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Optional

from cnn_jax.reports import report
from cnn_jax.reports import report_sweep
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers

# Config keys that may differ between the runs of one group: the seed, and
# the data file (experiments draw a training subset per seed).
SEED_KEYS = ("seed", "data.data_dir")


class RunFolderError(ValueError):
  """A --runs entry that is not a finished run or sweep."""


@dataclasses.dataclass
class Run:
  """One finished run: its folder, summary.json and metrics.jsonl records
  (superseded ones dropped)."""

  label: str
  path: str
  summary: Dict[str, Any]
  records: List[Dict[str, Any]]

  @property
  def config(self):
    return self.summary.get("config", {})

  @property
  def name(self):
    return os.path.basename(os.path.normpath(self.path))


@dataclasses.dataclass
class Group:
  """The runs of one label (seeds of one setting)."""

  label: str
  runs: List[Run]
  left_out: List[str] = dataclasses.field(default_factory=list)

  @property
  def config(self):
    """The first run's config (the others differ only in SEED_KEYS)."""
    return self.runs[0].config

  @property
  def seeds(self):
    return [r.config.get("seed") for r in self.runs]

  def values(self, key):
    """The finite values of summary key `key` (or test_metrics[key])."""
    found = []
    for run in self.runs:
      value = run.summary.get(key)
      if value is None:
        value = (run.summary.get("test_metrics") or {}).get(key)
      if isinstance(value, (int, float)):
        found.append(float(value))
    return found

  def best_run(self, key="test_accuracy"):
    return max(self.runs, key=lambda r: r.summary.get(key) or 0.0)


def parse_runs_flag(text):
  """'a=runs/x,b=runs/y*' -> [('a', 'runs/x'), ('b', 'runs/y*')].

  Raises:
    RunFolderError: an entry without 'label=' or with an empty side.
  """
  specs = []
  for item in (s.strip() for s in (text or "").split(",")):
    if not item:
      continue
    label, sep, path = item.partition("=")
    if not sep or not label.strip() or not path.strip():
      raise RunFolderError(f"--runs entry {item!r} is not label=path")
    specs.append((label.strip(), path.strip()))
  if not specs:
    raise RunFolderError("--runs names no run: give label=path,label=path")
  return specs


def _read_run(label, path, what=None):
  """The finished Run in `path`; `what` names it in errors."""
  what = what or f"{label}={path}"
  summary = workdirs.read_summary(path)
  if summary is None:
    raise RunFolderError(
        f"run {what}: no summary.json in {path!r} (not a run folder, or the "
        "run has not finished; train it with launch.py first)")
  status = summary.get("status", "finished")
  if status != "finished":
    raise RunFolderError(
        f"run {what} is not finished (summary.json status {status!r}); "
        "rerun its launch.py command to finish it")
  if "config" not in summary:
    raise RunFolderError(f"run {what}: summary.json holds no config")
  records = []
  if os.path.exists(os.path.join(path, "metrics.jsonl")):
    records = writers.drop_superseded(writers.read_metrics(path))
  return Run(label, os.path.abspath(path), summary, records)


def _expand(label, pattern):
  """The folders `pattern` names (a glob or one path), sorted."""
  matches = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
  if not matches:
    raise RunFolderError(f"run {label}={pattern}: no such run folder")
  return matches


def _setting(config, ignore=SEED_KEYS):
  flat = workdirs.flatten(config)
  return {k: v for k, v in flat.items() if k not in ignore}


def _differences(runs):
  """Config keys (besides SEED_KEYS) on which the runs disagree."""
  settings = [_setting(r.config) for r in runs]
  keys = sorted(set().union(*settings))
  return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True)
                                  for s in settings}) > 1]


def _sweep_groups(label, path):
  """One group per setting of the sweep's finished members; members that
  diverged (or stopped) are left out, as the sweep report does, and named
  in the first group's `left_out`."""
  runs, left_out = [], []
  for name, member_dir, result in report_sweep._read_members(path):  # pylint: disable=protected-access
    status = result.get("status", "finished")
    if status != "finished":
      left_out.append(f"{label}={path} member {name} ({status})")
      continue
    runs.append(_read_run(label, member_dir, f"{label}={path} member {name}"))
  if not runs:
    raise RunFolderError(f"sweep {label}={path}: no member finished "
                         f"({'; '.join(left_out)})")
  varying = _differences(runs)
  by_setting = {}
  for run in runs:
    flat = _setting(run.config)
    key = tuple((k, json.dumps(flat.get(k))) for k in varying)
    by_setting.setdefault(key, []).append(run)
  groups = []
  for key, members in by_setting.items():
    shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={json.loads(v)}"
                      for k, v in key)
    name = f"{label} ({shown})" if key else label
    for run in members:
      run.label = name
    groups.append(Group(name, members))
  groups[0].left_out = left_out
  return groups


def collect(specs):
  """[Group] of the (label, path) specs, in the order first given.

  Raises:
    RunFolderError: a path matches no folder, a run is unfinished or has no
      summary.json, or the runs of one label differ in more than the seed.
  """
  groups: Dict[str, Group] = {}
  for label, pattern in specs:
    for path in _expand(label, pattern):
      if report_sweep.is_sweep(path):
        for group in _sweep_groups(label, path):
          if group.label in groups:
            raise RunFolderError(f"label {group.label!r} is given twice "
                                 "(a sweep's groups need labels of their own)")
          groups[group.label] = group
        continue
      run = _read_run(label, path)
      groups.setdefault(label, Group(label, [])).runs.append(run)
  for group in groups.values():
    differing = _differences(group.runs)
    if differing:
      raise RunFolderError(
          f"runs labelled {group.label!r} differ in more than the seed "
          f"({', '.join(differing[:5])}): give them labels of their own")
  return list(groups.values())


def best_group(groups, key="test_accuracy"):
  """The group with the highest mean `key`."""
  def mean(group):
    values = group.values(key)
    return sum(values) / len(values) if values else float("-inf")
  return max(groups, key=mean)


def headline_interval(group, key="test_accuracy"):
  """(mean, low, high, method) of `key` over the group: Student t over its
  seeds for 2+ runs; for one run the Wilson interval of a test accuracy over
  its test examples; else (value, None, None, '')."""
  values = group.values(key)
  if not values:
    return None, None, None, ""
  if len(values) >= 2:
    mean, half, _ = report_sweep.mean_confidence_interval(values)
    return mean, mean - half, mean + half, "t"
  value = values[0]
  count = group.runs[0].summary.get("test_examples")
  if key == "test_accuracy" and count:
    low, high = report.wilson_interval(round(value * count), count)
    return value, low, high, "wilson"
  return value, None, None, ""


def describe_seeds(group) -> Optional[str]:
  seeds = [s for s in group.seeds if s is not None]
  return ", ".join(str(s) for s in seeds) if seeds else None
