"""Runs every lecture experiment (experiments/lecture/) in turn and writes
one index page linking their results.

  python experiments/run_all.py [--smoke] [--out=DIR] [--only=NAME,...]

--out defaults to runs/lecture (runs/lecture_smoke with --smoke); each
experiment writes into <out>/<name>/ (figures and result.md) and the index
goes to <out>/index.md. Experiments run one after another (they share the
CPU); one that fails is reported in the index and the exit status is 1.
At full settings the whole set takes roughly 10-15 minutes on 2 CPU cores;
with --smoke, a minute or two.
"""

import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a file: the repository root on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.lecture import augmentation
from experiments.lecture import common
from experiments.lecture import cross_correlation
from experiments.lecture import padding_stride
from experiments.lecture import parameter_efficiency
from experiments.lecture import pooling_invariance
from experiments.lecture import transfer

# In the lecture's order.
EXPERIMENTS = {
    cross_correlation.NAME: cross_correlation,
    parameter_efficiency.NAME: parameter_efficiency,
    pooling_invariance.NAME: pooling_invariance,
    augmentation.NAME: augmentation,
    padding_stride.NAME: padding_stride,
    transfer.NAME: transfer,
}


def write_index(out, results, smoke, seconds):
  """<out>/index.md: one row per experiment, linking its result.md."""
  lines = ["# Lecture experiments", "",
           "Each idea of the lecture as a runnable experiment "
           f"(`python experiments/run_all.py{' --smoke' if smoke else ''}`; "
           f"this call took {seconds / 60:.1f} min, finished training runs "
           "being reused from earlier calls). Every row links the "
           "experiment's result.md, which holds its figures and tables; "
           "rerun one alone with `python -m experiments.lecture.<name>`.", ""]
  if smoke:
    lines += ["**Smoke settings**: tiny data and models, so the numbers "
              "below mean nothing; run without --smoke for the results.", ""]
  rows = []
  for name, result in results.items():
    if isinstance(result, common.Result):
      link = f"[{result.title}]({os.path.relpath(result.path, out)})"
      status = ("skipped" if result.skipped else
                f"{result.seconds:.0f} s ({result.cpu_seconds:.0f} s CPU)")
      rows.append((link, result.finding, status))
    else:
      rows.append((name, f"FAILED: {result}", "-"))
  lines += [common.markdown_table(("experiment", "finding",
                                   "wall time (CPU time)"), rows), "",
            "CPU time is this process's (transfer: its subprocess is not "
            "counted); trained runs reused from an earlier call cost "
            "nothing here.", ""]
  path = os.path.join(out, "index.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def run_all(out, smoke=False, only=None):
  """Runs the experiments named in `only` (default all); returns ({name:
  Result or error text}, index path)."""
  names = list(EXPERIMENTS) if not only else list(only)
  unknown = [n for n in names if n not in EXPERIMENTS]
  if unknown:
    raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: "
                     f"{', '.join(EXPERIMENTS)}")
  os.makedirs(out, exist_ok=True)
  started = time.time()
  results = {}
  for name in names:
    print(f"=== {name} ===", flush=True)
    try:
      results[name] = EXPERIMENTS[name].run(os.path.join(out, name),
                                            smoke=smoke)
      print(f"{results[name].title}: {results[name].finding}", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      results[name] = f"{type(e).__name__}: {e}"
  return results, write_index(out, results, smoke, time.time() - started)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None,
                      help="output folder (default runs/lecture, or "
                      "runs/lecture_smoke with --smoke)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny settings (seconds per experiment)")
  parser.add_argument("--only", default="",
                      help="comma-separated experiment names: "
                      f"{', '.join(EXPERIMENTS)}")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(
      "runs", "lecture_smoke" if args.smoke else "lecture")
  only = [n for n in args.only.split(",") if n]
  try:
    results, index = run_all(out, args.smoke, only)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"index: {index}")
  return 0 if all(isinstance(r, common.Result) for r in results.values()) else 1


if __name__ == "__main__":
  raise SystemExit(main())
