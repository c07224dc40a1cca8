"""The report of a sweep: a workdir whose members/<k>/ hold one run each.

entry.write_report writes it when `is_sweep(workdir)`. report.md holds a
table of the members, best first; the mean and 95% confidence interval
(Student t) of the test metrics over the members that differ only in their
seed; the members' test-accuracy curves; links to the top-level summary
files of the sweep; and the best member's run report in best_member/.

Builds on markdown.py (tables, sealed writing) and on report.py for the best
member's run report; report.py does not import this module (entry.py, above
both, chooses between them), so there is no cycle.
"""

import glob
import json
import math
import os

import numpy as np

from cnn_jax.reports import markdown
from cnn_jax.reports import report
from cnn_jax.reports import visualize
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); beyond 30
# the normal 1.96 is within 2%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262,
        2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093,
        2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
        2.042)


def mean_confidence_interval(values):
  """(mean, half width of the 95% Student t interval, n); half width NaN
  for fewer than 2 values."""
  values = np.asarray(values, np.float64)
  n = len(values)
  mean = float(values.mean()) if n else float("nan")
  if n < 2:
    return mean, float("nan"), n
  t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
  return mean, float(t * values.std(ddof=1) / math.sqrt(n)), n


# --------------------------------------------------------------------------
# Reading the member folders.


def _member_dirs(workdir):
  members = os.path.join(workdir, "members")
  found = [d for d in glob.glob(os.path.join(members, "*")) if os.path.isdir(d)]
  return sorted(found, key=lambda d: (not os.path.basename(d).isdigit(),
                                      int(os.path.basename(d))
                                      if os.path.basename(d).isdigit()
                                      else 0, d))


def is_sweep(workdir):
  return bool(_member_dirs(workdir))


def _member_result(member_dir):
  """The member's result dict: summary.json, else the one other JSON file
  holding test metrics."""
  summary = workdirs.read_summary(member_dir)
  if summary is not None:
    return summary
  for path in sorted(glob.glob(os.path.join(member_dir, "*.json"))):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if isinstance(data, dict) and "test_accuracy" in data:
      return data
  return None


def _read_members(workdir):
  """[(name, folder, result dict)] of the members that hold results."""
  members = []
  for member_dir in _member_dirs(workdir):
    result = _member_result(member_dir)
    if result is not None:
      members.append((os.path.basename(member_dir), member_dir, result))
  if not members:
    raise FileNotFoundError(f"{workdir!r} has members/ but no member holds "
                            "results (summary.json) yet")
  return members


# --------------------------------------------------------------------------
# Sections of report.md.


def _members_section(members, configs, varying):
  """The members ranked by test accuracy, finished ones first."""
  shown = varying[:6]
  rows = []
  for (name, _, result), flat in zip(members, configs):
    rows.append([name] + [flat.get(k, "") for k in shown] + [
        f"{result.get('test_accuracy', float('nan')):.4f}",
        f"{result.get('test_loss', float('nan')):.4f}",
        result.get("status", "finished")])
  rows.sort(key=lambda r: (r[-1] != "finished",
                           -float(r[-3]) if markdown.is_number(r[-3]) else 0))
  return ["## Members (best first)", "",
          markdown.markdown_table(["member"] + shown + ["test accuracy",
                                                        "test loss", "status"],
                                  rows), ""]


def _seeds_section(members, configs, varying, finished):
  """Mean and 95% CI over the finished members whose configs agree except
  for the seed."""
  groups = {}
  for (_, _, result), flat, ok in zip(members, configs, finished):
    if ok:
      setting = tuple((k, json.dumps(flat.get(k), sort_keys=True))
                      for k in varying if k != "seed")
      groups.setdefault(setting, []).append(result)
  group_rows = []
  for setting, results in groups.items():
    label = ", ".join(f"{k}={json.loads(v)}" for k, v in setting) or "all"
    row = [label, len(results)]
    for key in ("test_accuracy", "test_loss"):
      values = [r[key] for r in results if r.get(key) is not None]
      mean, half, n = mean_confidence_interval(values)
      row.append(f"{mean:.4f} ± {half:.4f}" if n > 1 else f"{mean:.4f}")
    group_rows.append(row)
  return ["## Over seeds", "",
          markdown.markdown_table(("setting", "seeds", "test accuracy (mean ± "
                                   "95% CI)", "test loss (mean ± 95% CI)"),
                                  group_rows),
          "", "Intervals: Student t over the seeds of each setting (mean ± "
          "t(0.975, n-1) s / sqrt(n)); a single seed has none. Diverged "
          "members are left out.", ""]


def _curves_section(members, out_dir):
  """Writes the members' test-accuracy curves, if any member logged them."""
  curves = {}
  for name, member_dir, _ in members:
    if os.path.exists(os.path.join(member_dir, "metrics.jsonl")):
      records = [r for r in writers.drop_superseded(
          writers.read_metrics(member_dir)) if r["split"] == "test"]
      if records:
        curves[f"member {name} test"] = ([r["step"] for r in records],
                                         [r["accuracy"] for r in records])
  if not curves:
    return []
  visualize.plot_curve_comparison(
      curves, os.path.join(out_dir, "sweep_test_accuracy.png"),
      "Test accuracy of each member", "test accuracy", xlabel="step")
  return ["## Curves", "",
          markdown.markdown_image("sweep_test_accuracy.png",
                                  "test accuracy per member"), ""]


def _files_section(workdir):
  """Links to the sweep's top-level JSON, markdown and PNG files."""
  top = sorted(os.path.basename(p) for p in
               glob.glob(os.path.join(workdir, "*.json")) +
               glob.glob(os.path.join(workdir, "*.md")) +
               glob.glob(os.path.join(workdir, "*.png")))
  if not top:
    return []
  return ["## Sweep files", ""] + [f"- [{name}](../{name})"
                                   for name in top] + [""]


def _timing_section(workdir, members):
  sweep_summary = workdirs.read_summary(workdir) or {}
  wall = sweep_summary.get("wall_seconds")
  img_s = sweep_summary.get("train_img_per_s")
  devices = sorted({str(r.get("device")) for _, _, r in members
                    if r.get("device")} | ({sweep_summary["device"]}
                                           if "device" in sweep_summary
                                           else set()))
  return ["## Timing and hardware", "",
          f"- wall time of the sweep: {markdown.fmt_seconds(wall)}"
          if wall else
          "- wall time of the sweep: n/a (no top-level summary.json)",
          f"- training throughput: {img_s:,.0f} img/s" if img_s else
          "- training throughput: n/a",
          f"- device: {', '.join(devices) or 'n/a'}", ""]


def _best_member_section(members, finished, out_dir):
  """The best finished member as a single run (predictions and figures),
  written to `out_dir`/best_member/ when it has a checkpoint."""
  best = next((m for m, ok in sorted(
      zip(members, finished), key=lambda mf: (not mf[1], -mf[0][2].get(
          "test_accuracy", 0.0))) if ok), None)
  if best is None or not checkpoint.saved_steps(best[1]):
    return []
  best_dir = os.path.join(out_dir, "best_member")
  os.makedirs(best_dir, exist_ok=True)
  try:
    text = report.run_report(best[1], best_dir)
  except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
    return [f"Best member {best[0]}: no run report ({e}).", ""]
  markdown.write_sealed(os.path.join(best_dir, "report.md"), text)
  return ["## Best member", "",
          f"Member {best[0]} as a single run (config, model, "
          "confusion matrix, filters, feature maps, saliency): "
          "[best_member/report.md](best_member/report.md)", "",
          markdown.markdown_image("best_member/confusion_matrix.png",
                                  "confusion matrix of the best member"), ""]


def sweep_report(workdir, out_dir):
  """Writes the sweep's figures into `out_dir` (and the best member's run
  report into `out_dir`/best_member/); returns the markdown text."""
  members = _read_members(workdir)
  configs = [workdirs.flatten(m[2].get("config", {})) for m in members]
  keys = sorted(set().union(*configs))
  varying = [k for k in keys
             if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
  finished = [m[2].get("status", "finished") == "finished" for m in members]
  title = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  lines = [f"# Sweep report: {title}", "",
           f"Sweep folder: `{os.path.abspath(workdir)}`; {len(members)} "
           f"members (results in members/<k>/), {sum(finished)} finished. "
           "Config keys that vary: "
           f"{', '.join(f'`{k}`' for k in varying) or 'none'}.", ""]
  lines += _members_section(members, configs, varying)
  lines += _seeds_section(members, configs, varying, finished)
  lines += _curves_section(members, out_dir)
  lines += _files_section(workdir)
  lines += _timing_section(workdir, members)
  lines += _best_member_section(members, finished, out_dir)
  return "\n".join(lines)
