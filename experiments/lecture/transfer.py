"""Transfer learning: runs and links experiments/transfer_digits.py (the
transfer-learning experiment, kept with cnn_jax/transfer/) when it is
present; otherwise writes a note that it was skipped.

  python -m experiments.lecture.transfer [--out=DIR] [--smoke]

The script is run in a subprocess from the repository root, with --out (or
--workdir) pointing into <out>/transfer_digits when it declares that flag
(read from its --help). It trains many models (a pretraining run, then
several methods x sizes x seeds), so --smoke runs only its first step (its
--smoke, else --only_data, else --help). Its output is kept in
transfer_digits.log; its results.md and results.png are included in
result.md and the one-line finding is computed from its results.json.
"""

import json
import os
import subprocess
import sys

import numpy as np

from experiments.lecture import common

NAME = "transfer"
TITLE = "6. Transfer learning"
SCRIPT = os.path.join("experiments", "transfer_digits.py")


def _flags_of(script):
  """The --flags that `script --help` mentions (empty if it has no help)."""
  try:
    result = subprocess.run([sys.executable, script, "--help"],
                            capture_output=True, text=True, cwd=common.REPO,
                            timeout=300, check=False)
  except subprocess.TimeoutExpired:
    return set()
  text = result.stdout + result.stderr
  # absl lists booleans as --[no]name.
  return {word.replace("[no]", "").split("=")[0].strip("[],:")
          for word in text.split() if word.startswith("--")}


def _finding_from_results(path):
  """One line from the script's results.json: mean test accuracy per
  (labelled images, method) over its seeds."""
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  runs = results.get("runs", [])
  if not runs:
    return None
  by_size = {}
  for r in runs:
    by_size.setdefault(r["size"], {}).setdefault(r["method"], []).append(
        r["test_accuracy"])
  parts = []
  for size in sorted(by_size):
    methods = by_size[size]
    seeds = max(len(v) for v in methods.values())
    cells = ", ".join(f"{m.replace('_', ' ')} {100 * np.mean(v):.1f}%"
                      for m, v in sorted(methods.items(),
                                         key=lambda kv: -np.mean(kv[1])))
    parts.append(f"from {size} labelled images: {cells}")
  pretrain = results.get("pretrain_test_accuracy")
  head = (f"Pretrained on digits 0-4 ({100 * pretrain:.1f}% test accuracy), "
          if pretrain is not None else "")
  return (f"{head}then learning digits 5-9 (mean test accuracy over {seeds} "
          f"seed{'s' if seeds > 1 else ''}) {'; '.join(parts)}.")


def run(out, smoke=False):
  started = common.clock()
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  script = os.path.join(common.REPO, SCRIPT)
  if not os.path.exists(script):
    finding = (f"Skipped: {SCRIPT} (the transfer-learning experiment) is not "
               "in this checkout yet.")
    body = ["The transfer experiment belongs with `cnn_jax/transfer/` "
            f"(partial restore, frozen layers, a new head). Once `{SCRIPT}` "
            "exists, rerun this experiment (or experiments/run_all.py) to "
            "run and link it."]
    return common.write_result(out, NAME, TITLE, finding, body, started,
                               skipped=True)

  flags = _flags_of(script)
  target = os.path.join(out, "transfer_digits")
  command = [sys.executable, script]
  if "--out" in flags:
    command.append(f"--out={target}")
  elif "--workdir" in flags:
    command.append(f"--workdir={target}")
  if smoke:
    # Its full run trains many models; a smoke test only runs its first step.
    if "--smoke" in flags:
      command.append("--smoke")
    elif "--only_data" in flags:
      command.append("--only_data")
    else:
      command.append("--help")
  result = subprocess.run(command, capture_output=True, text=True,
                          cwd=common.REPO, check=False)
  log = os.path.join(out, "transfer_digits.log")
  with open(log, "w", encoding="utf-8") as f:
    f.write(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
  lines = [l for l in result.stdout.splitlines() if l.strip()]
  results_json = os.path.join(target, "results.json")
  if result.returncode != 0:
    finding = (f"{SCRIPT} failed (exit status {result.returncode}); see "
               "transfer_digits.log.")
  elif smoke:
    finding = (f"Smoke settings: ran only the first step of {SCRIPT} "
               f"(`{command[-1]}`); run without --smoke for the results.")
  elif os.path.exists(results_json):
    finding = _finding_from_results(results_json) or lines[-1]
  else:
    finding = lines[-1] if lines else f"{SCRIPT} ran; see its output."
  written = []
  if os.path.isdir(target):
    for root, _, files in os.walk(target):
      if os.path.relpath(root, target).split(os.sep)[0] in ("runs",
                                                            "pretrain",
                                                            "data"):
        continue  # the individual runs and data
      for name in sorted(files):
        if name.endswith((".md", ".png", ".json", ".html")):
          written.append(os.path.relpath(os.path.join(root, name), out))
  shown = " ".join(os.path.relpath(c, common.REPO) if c == script else
                   c.replace(common.REPO + os.sep, "") for c in command[1:])
  body = [f"The experiment is `{SCRIPT}` (with `cnn_jax/transfer/`); "
          f"this page ran `python {shown}` (exit status "
          f"{result.returncode}); its output: "
          "[transfer_digits.log](transfer_digits.log).", ""]
  body += [f"- [{path}]({path})" for path in sorted(written)[:40]]
  results_md = os.path.join(target, "results.md")
  if os.path.exists(results_md) and not smoke:
    with open(results_md, encoding="utf-8") as f:
      body += ["", "Its results.md:", "", f.read().replace("# ", "### ", 1)]
  if os.path.exists(os.path.join(target, "results.png")) and not smoke:
    body += ["", "![transfer results](transfer_digits/results.png)"]
  return common.write_result(out, NAME, TITLE, finding, body, started,
                             skipped=result.returncode != 0)


if __name__ == "__main__":
  raise SystemExit(common.main(NAME, __doc__, run))
