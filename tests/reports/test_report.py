"""report.md of a tiny run and of a sweep; statistics; never overwriting an
edited report; launch.py --mode=report."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax.reports import entry
from cnn_jax.reports import markdown
from cnn_jax.reports import plotting
from cnn_jax.reports import report
from cnn_jax.reports import report_sweep
from tests.conftest import REPO
from tests.reports.test_visualize import tiny_run  # noqa: F401 (a fixture)


def _images_in(text):
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_run_report_holds_the_metrics_of_summary_json(tiny_run, tmp_path):
  workdir, summary = tiny_run
  out = tmp_path / "report"
  path = entry.write_report(workdir, html=True, report_dir=str(out))
  text = open(path, encoding="utf-8").read()
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["test_accuracy"] == summary["test_accuracy"]
  assert f"| test accuracy (summary.json) | {saved['test_accuracy']:.4f} |" \
      in text
  assert f"{saved['test_loss']:.4f}" in text
  assert f"{saved['test_examples']:,} test images" in text
  assert "reproduces summary.json's accuracy" in text  # checkpoint restored
  assert saved["device"] in text and "wall time" in text
  # The per-layer table and the total.
  assert "| conv1 | [1, 28, 28, 8] | 80 |" in text
  assert "## Config" in text and '"learning_rate"' in text
  images = _images_in(text)
  assert {"learning_curves.png", "confusion_matrix.png",
          "per_class_accuracy.png", "misclassified.png", "filters.png",
          "feature_maps.png", "saliency.png"} <= set(images)
  for name in images:
    assert plotting.png_size(out / name)[0] > 0
  html = (out / "report.html").read_text()
  assert "<table>" in html and "confusion_matrix.png" in html


def test_an_edited_report_is_never_overwritten_silently(tmp_path):
  out = tmp_path / "report"
  out.mkdir()
  sweep = _fake_sweep(tmp_path / "sweep", [(0, 0.001, 0.95)])
  path = entry.write_report(sweep, report_dir=str(out))
  first = open(path, encoding="utf-8").read()
  assert markdown.is_untouched_report(path)
  # Unedited: regenerated without complaint.
  entry.write_report(sweep, report_dir=str(out))
  with open(path, "a", encoding="utf-8") as f:
    f.write("\nMy notes.\n")
  assert not markdown.is_untouched_report(path)
  with pytest.raises(entry.ReportExistsError, match="overwrite_report"):
    entry.write_report(sweep, report_dir=str(out))
  assert "My notes." in open(path, encoding="utf-8").read()
  entry.write_report(sweep, report_dir=str(out), overwrite=True)
  assert open(path, encoding="utf-8").read() == first
  # A report.md not written by cnn_jax.report is kept too.
  with open(path, "w", encoding="utf-8") as f:
    f.write("# hand-written\n")
  with pytest.raises(entry.ReportExistsError):
    entry.write_report(sweep, report_dir=str(out))


def test_wilson_interval():
  low, high = report.wilson_interval(9930, 10000)
  assert low < 0.993 < high and high - low < 0.004
  assert report.wilson_interval(100, 100)[1] == pytest.approx(1.0)
  assert report.wilson_interval(0, 100)[0] == pytest.approx(0.0)


def test_mean_confidence_interval_is_student_t():
  scipy_stats = pytest.importorskip("scipy.stats")
  values = [0.991, 0.993, 0.990, 0.994]
  mean, half, n = report_sweep.mean_confidence_interval(values)
  expected = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
  assert n == 4 and mean == pytest.approx(np.mean(values))
  assert half == pytest.approx(expected, rel=1e-3)
  assert math.isnan(report_sweep.mean_confidence_interval([0.9])[1])


def _fake_sweep(folder, members):
  """members/<k>/summary.json for (seed, learning_rate, test_accuracy)."""
  for k, (seed, lr, accuracy) in enumerate(members):
    member = folder / "members" / str(k)
    member.mkdir(parents=True)
    summary = {"status": "finished", "test_accuracy": accuracy,
               "test_loss": 1 - accuracy, "test_examples": 10000,
               "wall_seconds": 12.0, "device": "cpu",
               "config": {"seed": seed, "optim": {"learning_rate": lr}}}
    (member / "summary.json").write_text(json.dumps(summary))
  (folder / "ranking.json").write_text("{}")
  return str(folder)


def test_sweep_report_gives_confidence_intervals_over_seeds(tmp_path):
  members = [(0, 0.001, 0.97), (1, 0.001, 0.98), (2, 0.001, 0.96),
             (0, 0.01, 0.90), (1, 0.01, 0.92)]
  sweep = _fake_sweep(tmp_path / "sweep", members)
  text = open(entry.write_report(sweep), encoding="utf-8").read()
  assert "5 members" in text and "`optim.learning_rate`" in text
  mean, half, _ = report_sweep.mean_confidence_interval([0.97, 0.98, 0.96])
  assert f"| optim.learning_rate=0.001 | 3 | {mean:.4f} ± {half:.4f} |" in text
  mean, half, _ = report_sweep.mean_confidence_interval([0.90, 0.92])
  assert f"{mean:.4f} ± {half:.4f}" in text
  assert "[ranking.json](../ranking.json)" in text
  # Best member first.
  assert text.index("| 1 | 0.001 | 1 | 0.9800 |") < text.index(
      "| 0 | 0.001 | 0 | 0.9700 |") < text.index("| 3 | 0.01 | 0 | 0.9000 |")


def test_launch_report_mode_needs_no_config(tmp_path):
  sweep = _fake_sweep(tmp_path / "sweep", [(0, 0.001, 0.95), (1, 0.001, 0.96)])
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--mode=report",
       f"--workdir={sweep}", "--report_html"],
      capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.exists(os.path.join(sweep, "report", "report.md"))
  assert os.path.exists(os.path.join(sweep, "report", "report.html"))
  # Errors are ValueError/FileNotFoundError: launch.py prints them in one line.
  with pytest.raises(FileNotFoundError, match="nowhere"):
    entry.write_report(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="summary.json"):
    entry.write_report(str(tmp_path))
