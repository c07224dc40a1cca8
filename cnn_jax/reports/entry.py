"""--mode=report: writes report.md (and report.html) for a run or a sweep.

  python launch.py --mode=report --workdir=runs/mnist [--overwrite_report]
      [--report_html]

writes `<workdir>/report/report.md`: a sweep's report (report_sweep.py) when
the workdir holds members/<k>/, else a run's report (report.py).

An existing report is never overwritten silently: report.md ends with a
marker holding a hash of its text (markdown.py). A report.md whose text
still matches its marker (written by cnn_jax and not edited since) is
regenerated; one that was edited, or was not written by cnn_jax, is kept and
ReportExistsError is raised, unless `overwrite=True` (--overwrite_report).
"""

import os

from cnn_jax.reports import markdown
from cnn_jax.reports import report
from cnn_jax.reports import report_search
from cnn_jax.reports import report_sweep

REPORT_DIR = "report"


class ReportExistsError(ValueError):
  """report.md exists and was edited (or not written by cnn_jax)."""


def write_report(workdir, overwrite=False, html=False, report_dir=None):
  """Writes report.md (and report.html) with its PNGs for the run or sweep
  in `workdir`; returns the report.md path.

  Args:
    workdir: a finished run's folder, or a sweep's (with members/).
    overwrite: replace a report.md that was edited or not written here.
    html: also write report.html.
    report_dir: where to write; default `<workdir>/report`.
  Raises:
    ReportExistsError: report.md exists, was edited, and overwrite is False.
    FileNotFoundError: `workdir` holds no run or sweep results.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir not found: {workdir!r}")
  out_dir = report_dir or os.path.join(workdir, REPORT_DIR)
  path = os.path.join(out_dir, "report.md")
  if (os.path.exists(path) and not overwrite
      and not markdown.is_untouched_report(path)):
    raise ReportExistsError(
        f"{path} exists and was edited (or not written by cnn_jax.report); "
        "it is kept. Move it away, or pass --overwrite_report to replace it")
  os.makedirs(out_dir, exist_ok=True)
  if report_search.is_search(workdir):
    text = report_search.search_report(workdir, out_dir)
  elif report_sweep.is_sweep(workdir):
    text = report_sweep.sweep_report(workdir, out_dir)
  else:
    text = report.run_report(workdir, out_dir)
  markdown.write_sealed(path, text)
  if html:
    with open(os.path.join(out_dir, "report.html"), "w",
              encoding="utf-8") as f:
      f.write(markdown.render_html(
          text, os.path.basename(os.path.normpath(workdir))))
  return path
