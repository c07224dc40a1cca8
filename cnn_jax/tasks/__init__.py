"""Tasks: `TASKS[config.task]` says what the network predicts and how it is
scored (see base.Task)."""

from cnn_jax.tasks.base import Task
from cnn_jax.tasks.classification import CLASSIFICATION
from cnn_jax.tasks.detection import DETECTION
from cnn_jax.tasks.localization import LOCALIZATION
from cnn_jax.tasks.multilabel import MULTILABEL
from cnn_jax.tasks.segmentation import SEGMENTATION

TASKS = {
    "classification": CLASSIFICATION,
    "multilabel": MULTILABEL,  # sigmoid per label, CheXNet-weighted BCE
    "segmentation": SEGMENTATION,  # softmax per pixel, CE + soft Dice
    "localization": LOCALIZATION,  # class + one box, CE + L1 + GIoU
    "detection": DETECTION,  # CenterNet heat maps + boxes, COCO mAP
}


def get_task(name):
  if name not in TASKS:
    raise ValueError(
        f"config.task={name!r} is not one of: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def task_for_run(config, train_set):
  """The Task named by `config.task` (default 'classification'),
  specialised to the run by its `for_run` (config options, training-label
  statistics such as multi-label positive weights) when it has one."""
  task = get_task(config.get("task", "classification"))
  return task.for_run(config, train_set) if task.for_run else task


__all__ = ["TASKS", "Task", "get_task", "task_for_run"]
