"""Run outputs: metrics.jsonl, TensorBoard event files, and a progress bar."""

import json
import os
import sys

import jax
import numpy as np
import tqdm

from cnn_jax.runs import workdirs


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if hasattr(value, "tolist"):  # jax arrays
    return value.tolist()
  return value


def _tensorboardx_writer():
  """tensorboardX.SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed (only for a type hint of
  its image and histogram methods, which cnn_jax does not call): 2.5 s of
  every run's start on a 2-core CPU. Hidden while tensorboardX loads, unless
  the process has imported torch already.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends one JSON object per record to metrics.jsonl and mirrors scalars
  to TensorBoard (tensorboardX: event files without TensorFlow).

  A resumed run passes `purge_step` (the step after its checkpoint's):
  TensorBoard then hides the earlier run's events from that step on, which
  the resumed run logs again.

  An OSError writing metrics.jsonl (or creating the TensorBoard folder) is
  raised as workdirs.WorkdirError naming the file: a full disk, for one.
  """

  def __init__(self, workdir, purge_step=None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._workdir = workdir
    with workdirs.writing(workdir, self.path):
      self._file = open(self.path, "a", encoding="utf-8")
    SummaryWriter = _tensorboardx_writer()  # pylint: disable=invalid-name
    tensorboard_dir = os.path.join(workdir, "tensorboard")
    try:
      with workdirs.writing(workdir, tensorboard_dir):
        self._tb = SummaryWriter(tensorboard_dir, purge_step=purge_step)
    except workdirs.WorkdirError:
      self._file.close()
      raise

  def write(self, step, split, metrics):
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with workdirs.writing(self._workdir, self.path):
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    for key, value in record.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{split}/{key}", value, int(step))

  def flush(self):
    with workdirs.writing(self._workdir, self.path):
      self._file.flush()
    self._tb.flush()

  def close(self):
    self._tb.close()
    with workdirs.writing(self._workdir, self.path):
      self._file.close()


class NullWriter:
  """MetricWriter's interface, writing nothing: for processes other than
  process 0 of a multi-process run (process 0 writes the run's files)."""

  def write(self, step, split, metrics):
    del step, split, metrics

  def flush(self):
    pass

  def close(self):
    pass


def read_metrics(workdir):
  """All records of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_superseded(records):
  """The records of the run as it finally went: a 'resumed' record at step N
  (written when a run resumes from its checkpoint of step N) supersedes the
  earlier records after step N, which the resumed run logs again (at step 0:
  an attempt killed before its first checkpoint, started again). Nothing is
  deleted from metrics.jsonl; readers call this."""
  kept = []
  for record in records:
    if record["split"] == "resumed":
      kept = [r for r in kept if r["step"] <= record["step"]]
    kept.append(record)
  return kept


def progress_bar(total, initial=0):
  """A tqdm bar (epoch, loss, img/s, ETA) that is silent off a terminal and
  on processes other than process 0."""
  return tqdm.tqdm(total=total, initial=initial, unit="step",
                   dynamic_ncols=True,
                   disable=not sys.stdout.isatty() or jax.process_index() > 0,
                   leave=True)


def report(line):
  """Prints a progress line without breaking a running progress bar (on
  process 0 only: the others of a multi-process run stay quiet)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(line)
