"""What a sweep writes (cnn_jax/sweeps/sweep.py runs it): a run folder per
member (members/<k>/: summary.json with its resolved config, metrics.jsonl,
tensorboard/, a checkpoint), the sweep's own metrics.jsonl (every member's
records, with a 'member' field), and the ranking (summary.json, summary.md).
"""

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.distributed import multihost
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers


@dataclasses.dataclass
class Member:
  """Host-side record of one member during the run."""

  index: int
  overrides: dict
  config: ml_collections.ConfigDict
  workdir: str
  writer: writers.MetricWriter = None
  alive: bool = True
  diverged_at: int = None  # the step whose loss/params were not finite
  train_loss: float = None
  test_metrics: dict = None


def prepare(workdir):
  """Checks that `workdir` holds no results (in every process) and creates
  it (process 0), before any process writes into it."""
  workdirs.check_writable(workdir)  # an existing workdir, before any write
  existing = [f for f in ("summary.json", "metrics.jsonl", "members",
                          "checkpoints")
              if os.path.exists(os.path.join(workdir, f))]
  if existing:
    raise workdirs.WorkdirInUseError(
        f"workdir {workdir!r} already holds results ({', '.join(existing)}); "
        "choose a new --workdir (results are never overwritten; a sweep is "
        "not resumed)")
  multihost.barrier("sweep workdir checked")
  if multihost.is_main():
    with workdirs.writing(workdir):
      os.makedirs(workdir, exist_ok=True)



class SweepWriter:
  """The sweep's metrics.jsonl (all members, with a 'member' field) and each
  member's own metrics.jsonl / TensorBoard folder."""

  def __init__(self, workdir):
    self._workdir = workdir
    with workdirs.writing(workdir):
      self._file = open(os.path.join(workdir, "metrics.jsonl"), "a",
                        encoding="utf-8")

  def write(self, member, step, split, metrics):
    member.writer.write(step, split, metrics)
    record = {"step": int(step), "split": split, "member": member.index}
    record.update({k: writers._plain(v) for k, v in metrics.items()})  # pylint: disable=protected-access
    with workdirs.writing(self._workdir, self._file.name):
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()

  def close(self):
    self._file.close()


class NullSweepWriter:
  """SweepWriter's interface, writing nothing: for processes other than
  process 0 (their members' writers are writers.NullWriter)."""

  def write(self, member, step, split, metrics):
    member.writer.write(step, split, metrics)

  def close(self):
    pass


def save_member(member, state, mean, std, per_epoch, test_metrics):
  """Saves a member's (or a search's best trial's) final state, a
  TrainState that every process holds whole, as an ordinary run's
  checkpoint in member.workdir; called by every process (Orbax writes it
  once, from process 0)."""
  step = int(state.step)
  position = batching.IteratorPosition(step // per_epoch, step % per_epoch)
  checkpoint_config = member.config.get("checkpoint")
  if checkpoint_config is None:
    checkpoint_config = ml_collections.ConfigDict(
        {"every_steps": 0, "every_seconds": 0.0, "keep": 1,
         "keep_best_metric": "", "async_save": False})
  manager = checkpoint.make_manager(member.workdir, checkpoint_config)
  meta = {"step": step, "position": dataclasses.asdict(position),
          "pending_metrics": [], "test_metrics": test_metrics,
          "config": member.config.to_dict(),
          "normalization": {"mean": mean.tolist(), "std": std.tolist()}}
  checkpoint.save(manager, state, meta)
  manager.wait_until_finished()
  manager.close()
  return step


def write_member_summary(member, sweep_workdir, steps, start_time, throughput,
                    chunk_members, mean, std):
  status = "finished" if member.alive else "diverged"
  summary = {
      "status": status,
      "test_accuracy": member.test_metrics["accuracy"],
      "test_loss": member.test_metrics["loss"],
      "test_examples": member.test_metrics["count"],
      "task": "classification",
      "test_metrics": member.test_metrics,
      "steps": steps,
      "epochs": member.config.train.num_epochs,
      "wall_seconds": time.time() - start_time,
      # The member's share of its chunk's images/s (compilation excluded).
      "train_img_per_s": throughput / chunk_members if throughput else None,
      "normalization": {"mean": mean.tolist(), "std": std.tolist()},
      "device": jax.devices()[0].device_kind,
      "config": member.config.to_dict(),
      "sweep": {"workdir": os.path.abspath(sweep_workdir),
                "member": member.index, "overrides": member.overrides,
                "diverged_at_step": member.diverged_at,
                "chunk_train_img_per_s": throughput},
  }
  if not member.alive:
    summary["step"] = steps
    summary["error"] = (f"non-finite loss or parameters at step "
                        f"{member.diverged_at}; state kept from step {steps}")
  workdirs.write_summary(member.workdir, summary)
  return summary


def ranked(members):
  """Finished members by test accuracy (best first), then diverged ones."""
  return sorted(members, key=lambda m: (not m.alive,
                                        -m.test_metrics["accuracy"]))


def _fmt(value):
  return f"{value:g}" if isinstance(value, float) else str(value)


def summary_markdown(rows, names):
  """The ranking as a markdown table."""
  header = (["rank", "member"] + names
            + ["test accuracy", "test loss", "train loss", "status"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for row in rows:
    cells = ([str(row["rank"]), str(row["member"])]
             + [_fmt(row["overrides"][n]) for n in names]
             + [f"{row['test_accuracy']:.4f}", f"{row['test_loss']:.4f}",
                "-" if row["train_loss"] is None
                else f"{row['train_loss']:.4f}", row["status"]])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_ranking(workdir, config, members, names, chunk_size, mesh, *,
                  steps, start_time, throughputs):
  """Writes the sweep's summary.md and summary.json (members ranked by test
  accuracy); returns (summary dict, the markdown table)."""
  sweep_section = config.sweep
  rows = []
  for rank, member in enumerate(ranked(members), 1):
    rows.append({"rank": rank, "member": member.index,
                 "overrides": member.overrides,
                 "test_accuracy": member.test_metrics["accuracy"],
                 "test_loss": member.test_metrics["loss"],
                 "train_loss": member.train_loss,
                 "status": "finished" if member.alive else "diverged",
                 "diverged_at_step": member.diverged_at,
                 "workdir": os.path.join("members", str(member.index))})
  table = summary_markdown(rows, names)
  main = multihost.is_main()  # the others return the same summary, unwritten
  if main:
    with workdirs.writing(workdir), open(os.path.join(workdir, "summary.md"),
                                         "w", encoding="utf-8") as f:
      f.write(f"# Sweep: {len(members)} members over {', '.join(names)}\n\n"
              + table)
  all_diverged = all(r["status"] == "diverged" for r in rows)
  summary = {
      "status": "diverged" if all_diverged else "finished",
      "kind": "sweep",
      "members": len(members),
      "axes": names,
      "mode": sweep_section.get("mode", "grid"),
      "chunk": chunk_size,
      "ranking": rows,
      "best_member": rows[0]["member"],
      "test_accuracy": rows[0]["test_accuracy"],
      "test_loss": rows[0]["test_loss"],
      "diverged": [r["member"] for r in rows if r["status"] == "diverged"],
      "steps": steps,
      "epochs": config.train.num_epochs,
      "wall_seconds": time.time() - start_time,
      # All members' training images per second (compilation excluded).
      "train_img_per_s": float(np.mean(throughputs)) if throughputs else None,
      "mesh": dict(mesh.shape),
      "devices": int(mesh.devices.size),
      "processes": jax.process_count(),
      "device": jax.devices()[0].device_kind,
      "config": config.to_dict(),
  }
  if main:
    workdirs.write_summary(workdir, summary)
  return summary, table
