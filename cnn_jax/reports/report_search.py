"""The report of a search (cnn_jax/sweeps/search.py): a workdir with
trials.jsonl and a summary.json of kind 'search'.

entry.write_report writes it when `is_search(workdir)`: the trials ranked
by validation score (test accuracy for the kept ones), the rungs (how many
trials stopped at each) or PBT's lineage, and one figure per hyperparameter:
its value over training steps for every trial (PBT: each trial's
trajectory, its ancestors' values included), coloured by the trial's final
rank. Reads only the files (reports never import sweeps).
"""

import json
import os

from cnn_jax.reports import markdown
from cnn_jax.reports import plotting
from cnn_jax.runs import workdirs


def is_search(workdir):
  summary = workdirs.read_summary(workdir)
  return (summary is not None and summary.get("kind") == "search"
          and os.path.exists(os.path.join(workdir, "trials.jsonl")))


def _read_trials(workdir):
  with open(os.path.join(workdir, "trials.jsonl"), encoding="utf-8") as f:
    return {t["id"]: t for t in map(json.loads, f)}


def _segments(trial):
  """[(step_from, step_to, values)] of the trial's trajectory up to its
  stop step."""
  points = trial["trajectory"]
  stop = trial["stop_step"] or points[-1][0]
  ends = [p[0] for p in points[1:]] + [stop]
  return [(start, end, values) for (start, values), end in zip(points, ends)]


def hyperparameter_figure(trials, ranks, name, path):
  """Draws `name` over steps for every trial, coloured by final rank (dark:
  best); a stopped trial's line ends with an x at its stop step."""
  plt = plotting.plt
  fig, ax = plt.subplots(figsize=(7, 4))
  cmap = plt.get_cmap("viridis")
  count = max(len(ranks) - 1, 1)
  for trial_id in sorted(trials, key=lambda i: -ranks[i]):
    trial = trials[trial_id]
    color = cmap((ranks[trial_id] - 1) / count)
    xs, ys = [], []
    for start, end, values in _segments(trial):
      if name in values:
        xs += [start, end]
        ys += [values[name], values[name]]
    if not xs:
      continue
    ax.plot(xs, ys, color=color, lw=2.5 if ranks[trial_id] == 1 else 1.0)
    if trial["status"] == "stopped":
      ax.plot(xs[-1], ys[-1], "x", color=color)
  values = [vs[name] for t in trials.values() for _, _, vs in _segments(t)
            if name in vs]
  if values and min(values) > 0 and max(values) / min(values) > 20:
    ax.set_yscale("log")  # e.g. a log-uniform learning rate
  ax.set_xlabel("step (of the trial's state)")
  ax.set_ylabel(name)
  ax.set_title(f"{name} by trial (colour: final rank, dark = best)")
  plotting.save_figure(fig, path)


def search_report(workdir, out_dir):
  """Writes the figures into `out_dir`; returns the markdown text."""
  summary = workdirs.read_summary(workdir)
  trials = _read_trials(workdir)
  ranks = {row["trial"]: row["rank"] for row in summary["ranking"]}
  names = summary["space"]
  lines = [f"# Search report: {os.path.basename(os.path.normpath(workdir))}",
           "",
           f"{summary['search']} search over {', '.join(names)}: "
           f"{summary['trials']} trials, {summary['slots']} slots, "
           f"{summary['member_epochs']:.1f} member-epochs, "
           f"{markdown.fmt_seconds(summary['wall_seconds'])}. Selection on "
           f"the validation split ({summary['metric']}); the test split was "
           "evaluated once, at the end, for the kept trials.", "",
           f"Best: trial {summary['best_trial']}, validation accuracy "
           f"{summary['val_accuracy']:.4f}, test accuracy "
           + ("-" if summary["test_accuracy"] is None
              else f"{summary['test_accuracy']:.4f}")
           + " (rerun: `python launch.py --config "
           f"{os.path.join(workdir, 'best_config.py')} --workdir runs/best`).",
           "", "## Trials", ""]
  rows = []
  for row in summary["ranking"]:
    rows.append([row["rank"], row["trial"],
                 "-" if row["parent"] is None else row["parent"]]
                + [f"{row['values'][n]:.4g}" if isinstance(
                    row["values"][n], float) else row["values"][n]
                   for n in names]
                + [f"{row['start_step']}-{row['stop_step']}", row["status"],
                   "-" if row["val_accuracy"] is None
                   else f"{row['val_accuracy']:.4f}",
                   "-" if row["test_accuracy"] is None
                   else f"{row['test_accuracy']:.4f}"])
  lines.append(markdown.markdown_table(
      ["rank", "trial", "parent"] + names
      + ["steps", "status", "val accuracy", "test accuracy"], rows))
  if summary.get("halving"):
    lines += ["", "## Rungs", ""]
    stops = [t["stop_step"] for t in trials.values()
             if t["status"] == "stopped"]
    for step in sorted(set(stops)):
      lines.append(f"- step {step}: {stops.count(step)} trials stopped")
  if summary.get("pbt"):
    lines += ["", "## Lineage (PBT)", ""]
    for trial in trials.values():
      if trial["parent"] is not None:
        lines.append(f"- trial {trial['id']} (slot {trial['slot']}) from "
                     f"trial {trial['parent']} at step {trial['start_step']}")
  lines += ["", "## Hyperparameters over steps", ""]
  for name in names:
    if name == "seed":
      continue
    file_name = f"search_{name.replace('.', '_')}.png"
    hyperparameter_figure(trials, ranks, name,
                          os.path.join(out_dir, file_name))
    lines += [markdown.markdown_image(file_name, name), ""]
  return "\n".join(lines)
