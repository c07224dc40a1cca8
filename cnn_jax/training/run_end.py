"""The end of a run (training/train.py): summary.json, finished or
preempted, and the learning-curve PNG; written by process 0 only."""

import os
import signal

import jax

from cnn_jax.distributed import multihost
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.training import preemption


def finish(run, end, start_step):
  """Writes summary.json (and the learning curves) and returns it; raises
  preemption.Preempted instead when the loop was stopped by a signal."""
  config = run.config
  if end.signum is not None:
    write_summary(run.workdir, {
        "status": "preempted", "step": end.step,
        "signal": signal.Signals(end.signum).name,
        "wall_seconds": run.wall_seconds(), "config": config.to_dict()})
    raise preemption.Preempted(end.signum, end.step, run.workdir)

  if multihost.is_main():
    # Here, not at the top: matplotlib would add ~0.5 s to every run's start.
    from cnn_jax.reports import visualize  # pylint: disable=g-import-not-at-top
    visualize.plot_learning_curves(
        writers.drop_superseded(writers.read_metrics(run.workdir)),
        os.path.join(run.workdir, "learning_curves.png"))
  test_metrics = end.test_metrics
  summary = {
      "status": "finished",
      "test_accuracy": test_metrics["accuracy"],
      "test_loss": test_metrics["loss"],
      "test_examples": test_metrics["count"],
      # Every metric of the task (config.task), e.g. mean_auroc, mean_iou.
      "task": run.task.name,
      "test_metrics": test_metrics,
      "steps": end.step,
      "epochs": config.train.num_epochs,
      "resumed_from_step": start_step if run.continues else None,
      "wall_seconds": run.wall_seconds(),
      "train_img_per_s": end.train_img_per_s,
      "normalization": run.run_meta["normalization"],
      "device": jax.devices()[0].device_kind,
      "devices": int(run.mesh.devices.size),  # the mesh's (config.mesh)
      "processes": jax.process_count(),
      "config": config.to_dict(),
  }
  write_summary(run.workdir, summary)
  return summary


def write_summary(workdir, summary):
  """summary.json, written by process 0 only."""
  if multihost.is_main():
    workdirs.write_summary(workdir, summary)
