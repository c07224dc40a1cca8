"""What a search (cnn_jax/sweeps/search.py) writes into its workdir:

  trials.jsonl     one record per trial (every trial, not only every slot):
                   its values, resolved config, lineage (slot, start/stop
                   step, parent for PBT, rungs passed), hyperparameter
                   trajectory [(step, values)], validation history, status,
                   and test metrics for the trials kept to the end;
  summary.json, summary.md   trials ranked by validation score (the test
                   split is only reported, never used to choose);
  best_config.py   the best trial's resolved config: `python launch.py
                   --config <search>/best_config.py --workdir runs/best`
                   reruns it as an ordinary single run;
  best/            the best trial's final state as an ordinary run folder
                   (summary.json, checkpoints/): `launch.py --mode=evaluate
                   --config <search>/best_config.py --workdir <search>/best`.
(checkpoints/ and kept/<trial>/ are the search's resume state,
search_resume.py.)
"""

import json
import os
import pprint
import shutil

import jax

from cnn_jax.distributed import multihost
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_outputs

# A finished search (summary.json) or a sweep's results: never written over.
# checkpoints/ and kept/ without summary.json: a killed search, resumed.
_RESULTS = ("summary.json", "members", "metrics.jsonl")


def prepare(workdir):
  """Checks `workdir` in every process, then process 0 creates it."""
  workdirs.check_writable(workdir)
  existing = [f for f in _RESULTS if os.path.exists(os.path.join(workdir, f))]
  if existing:
    raise workdirs.WorkdirInUseError(
        f"workdir {workdir!r} already holds results ({', '.join(existing)}); "
        "choose a new --workdir (results are never overwritten)")
  multihost.barrier("search workdir checked")
  if multihost.is_main():
    with workdirs.writing(workdir):
      os.makedirs(workdir, exist_ok=True)
  multihost.barrier("search workdir made")


def ranked(trials, metric):
  """Finished trials by final validation score (best first), then the rest
  by how far they got, then by score."""
  return sorted(trials, key=lambda t: (
      t.status != "finished", -(t.stop_step or 0), -t.score(metric), t.id))


def _fmt(value):
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown(rows, names, kind):
  header = ["rank", "trial", "parent"] + names + [
      "steps", "status", "val accuracy", "test accuracy"]
  lines = [f"# {kind} search: {len(rows)} trials\n",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    test = row["test_accuracy"]
    cells = ([str(row["rank"]), str(row["trial"]),
              "-" if row["parent"] is None else str(row["parent"])]
             + [_fmt(row["values"][n]) for n in names]
             + [f"{row['start_step']}-{row['stop_step']}", row["status"],
                "-" if row["val_accuracy"] is None
                else f"{row['val_accuracy']:.4f}",
                "-" if test is None else f"{test:.4f}"])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _config_file(config, trial, summary_line):
  body = pprint.pformat(config.to_dict(), indent=1, width=78)
  return (f'"""The best trial (trial {trial.id}) of a search: {summary_line}.\n'
          "\nRerun it as an ordinary single run:\n"
          "  python launch.py --config <this file> --workdir runs/best\n"
          '"""\n\nimport ml_collections\n\n\n'
          f"def get_config():\n  return ml_collections.ConfigDict(\n"
          f"      {body})\n")


def write(workdir, config, found, trials, kept, probe, mean, std, per_epoch,
          counts):
  """Writes every output (module docstring); returns the summary dict.
  Every process calls it and gets the same summary; process 0 writes the
  files, all of them save best/'s checkpoint (Orbax writes it once)."""
  del probe
  metric, kind = found["metric"], found["kind"]
  main = multihost.is_main()
  if main:
    with workdirs.writing(workdir), open(
        os.path.join(workdir, "trials.jsonl"), "w", encoding="utf-8") as f:
      for trial in trials:
        record = trial.record()
        record["config"] = sweep_config.resolved_config(
            config, trial.values).to_dict()
        f.write(json.dumps(record, default=writers._plain) + "\n")  # pylint: disable=protected-access
  rows = []
  for rank, trial in enumerate(ranked(trials, metric), 1):
    last_val = trial.val[-1][1] if trial.val else None
    rows.append({
        "rank": rank, "trial": trial.id, "parent": trial.parent,
        "slot": trial.slot, "values": trial.values, "status": trial.status,
        "start_step": trial.start_step, "stop_step": trial.stop_step,
        "rungs_passed": trial.rungs_passed,
        "val_accuracy": None if last_val is None else last_val["accuracy"],
        "val_loss": None if last_val is None else last_val["loss"],
        "test_accuracy": trial.test["accuracy"] if trial.test else None,
        "test_loss": trial.test["loss"] if trial.test else None})
  names = sorted(found["space"])
  table = _markdown(rows, names, kind)
  if main:
    with workdirs.writing(workdir), open(os.path.join(workdir, "summary.md"),
                                         "w", encoding="utf-8") as f:
      f.write(table)
  best = ranked(trials, metric)[0]
  summary = {
      "status": "finished" if best.status == "finished" else "diverged",
      "kind": "search", "search": kind, "space": names,
      "trials": len(trials), "slots": found["slots"], "metric": metric,
      "ranking": rows, "best_trial": best.id,
      "val_accuracy": rows[0]["val_accuracy"],
      "test_accuracy": rows[0]["test_accuracy"],
      "test_loss": rows[0]["test_loss"],
      "member_epochs": counts["member_steps"] / per_epoch,
      "halving": found.get("halving"),
      "pbt": found.get("pbt"),
      **counts,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "device": jax.devices()[0].device_kind,
      "config": config.to_dict(),
  }
  if best.id in kept:
    best_config = sweep_config.resolved_config(config, best.values)
    line = (f"validation accuracy {rows[0]['val_accuracy']:.4f}, test "
            f"accuracy {rows[0]['test_accuracy']:.4f}")
    if kind == "pbt":
      line += ("; PBT changed its hyperparameters during training (see "
               "trials.jsonl's trajectory), these are its final values")
    best_dir = os.path.join(workdir, "best")
    if main:
      with workdirs.writing(workdir), open(
          os.path.join(workdir, "best_config.py"), "w",
          encoding="utf-8") as f:
        f.write(_config_file(best_config, best, line))
      with workdirs.writing(workdir):
        if os.path.exists(best_dir):  # begun by a search killed while writing
          shutil.rmtree(best_dir)
        os.makedirs(best_dir)
    multihost.barrier("best/ made")
    member = sweep_outputs.Member(best.id, best.values, best_config, best_dir)
    sweep_outputs.save_member(member, kept[best.id], mean, std, per_epoch,
                              best.test)
  if main and best.id in kept:
    workdirs.write_summary(best_dir, {
        "status": "finished", "task": "classification",
        "test_accuracy": best.test["accuracy"], "test_loss": best.test["loss"],
        "test_metrics": best.test, "steps": best.stop_step,
        "epochs": best_config.train.num_epochs,
        "config": best_config.to_dict(),
        "search": {"workdir": os.path.abspath(workdir), "trial": best.id,
                   "val": best.val[-1][1]}})
  if main:
    workdirs.write_summary(workdir, summary)
  writers.report(table)
  return summary


def read_trials(workdir):
  """The records of trials.jsonl (dicts)."""
  with open(os.path.join(workdir, "trials.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]

