"""Training batches through Grain: random-access source -> the epoch's order
-> per-example decode + host augmentation -> batch -> worker processes.

  slots    grain.MapDataset.range: slot j = row j % b of global batch j // b
  order    slot -> (epoch, example): batching.epoch_permutation(n, seed,
           epoch), each batch's indices sorted, as batching.train_batches
  read     (epoch, example) -> {'image': uint8 [H, W, C], 'label'}: decoded
           and augmented (decode.py) with a generator seeded by
           (seed, epoch, example), so in any process the same pixels
  batch    grain's MapDataset.batch(b): one element per global batch
  workers  .to_iter_dataset().mp_prefetch(workers): worker w computes the
           batches w, w + W, ...; grain interleaves them back in order

The order is the in-memory iterator's (batching.train_batches) exactly:
the same examples in the same rows of the same batches, the remainder of
each epoch dropped, every other example once per epoch. Batching happens
on the MapDataset, before the workers split the work, so each worker makes
whole batches and the worker count cannot change them.

Processes (multi-host): process p of P yields rows [p b, (p + 1) b) of each
global batch (b = batch_size / P): the union of the processes' batches is
the 1-process sequence, and each process reads only its rows' files.
(Grain's own ShardByJaxProcess shards the *records* instead, so each host
shuffles its own part and the global batches change with the host count.)

Resuming: each yielded position carries the Grain iterator state after that
batch ('state', saved in the checkpoint's meta); a pipeline built the same
way continues from it with set_state. With another worker count (whose
states differ in form) it starts from the position instead: the same
batches, as the order is a function of the global batch index.
"""

import dataclasses
import functools
import os
import warnings

from absl import flags
import grain
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import decode
from cnn_jax.data.image_files import SkippedImagesWarning

PIPELINE = "grain"
_BAD_RETRIES = 16  # readable neighbours tried in place of a bad file


def available_cores():
  """CPU cores this process may run on (os.cpu_count ignores affinity)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class GrainOptions:
  """Grain's knobs (each field a `config.data` key).

  workers: worker processes decoding batches; -1: one per core; 0: none,
    batches are made by threads in the training process.
  prefetch: batches each worker (or the thread pool) keeps ready.
  skip_bad: an unreadable file is replaced by the next readable example
    (source order) and counted, instead of stopping the run.
  """

  workers: int = -1
  prefetch: int = 2
  skip_bad: bool = False

  @classmethod
  def from_config(cls, data_config):
    options = cls(**{f.name: data_config.get(f.name, f.default)
                     for f in dataclasses.fields(cls)})
    if options.workers < -1:
      raise ValueError(f"config.data.workers={options.workers} must be >= 0 "
                       "(or -1: one per core)")
    if options.prefetch < 1:
      raise ValueError(f"config.data.prefetch={options.prefetch} must be >= 1")
    return options

  @property
  def num_workers(self):
    return available_cores() if self.workers == -1 else self.workers


def host_augment(data_config, example_shape):
  """decode.HostAugment from config.data (random_crop_scale,
  random_crop_ratio, random_flip) for examples of `example_shape`."""
  return decode.HostAugment(
      image_size=tuple(example_shape[:2]),
      crop_scale=tuple(data_config.get("random_crop_scale", ())),
      crop_ratio=tuple(data_config.get("random_crop_ratio", (3 / 4, 4 / 3))),
      flip=bool(data_config.get("random_flip", False)),
      channels=example_shape[-1])


@functools.lru_cache(maxsize=2)
def _epoch_order(num_examples, seed, epoch):
  return batching.epoch_permutation(num_examples, seed, epoch)


@dataclasses.dataclass(frozen=True)
class _TrainOrder:
  """slot j -> (global batch, epoch, example index) for this process's rows
  (a grain map: picklable, pure)."""

  num_examples: int
  batch_size: int  # global
  seed: int
  first_row: int
  rows: int  # of this process

  def __call__(self, slot):
    global_batch, row = divmod(int(slot), self.rows)
    per_epoch = batching.steps_per_epoch(self.num_examples, self.batch_size)
    epoch, batch = divmod(global_batch, per_epoch)
    order = _epoch_order(self.num_examples, self.seed, epoch)
    take = np.sort(order[batch * self.batch_size:
                         (batch + 1) * self.batch_size])
    return global_batch, epoch, int(take[self.first_row + row])


@dataclasses.dataclass(frozen=True)
class _ReadExample:
  """(global batch, epoch, index) -> one example, decoded and augmented
  with a generator seeded by (seed, epoch, index)."""

  # A FileImages or tfds_images.EncodedImages (answering encoded(int):
  # the undecoded example and its name), or anything answering images[int].
  images: object
  labels: object  # an array, or tfds_images.RecordLabels
  augment: decode.HostAugment
  seed: int
  skip_bad: bool

  def _read(self, index, rng):
    encoded = getattr(self.images, "encoded", None)
    if encoded is None:
      return decode.transform_array(self.images[index], self.augment, rng)
    source, name = encoded(index)  # a path, a file object or an array
    if isinstance(source, np.ndarray):
      return decode.transform_array(source, self.augment, rng)
    return decode.decode_file(source, self.augment, rng, name=name)

  def __call__(self, slot):
    global_batch, epoch, index = slot
    rng = np.random.default_rng([self.seed, epoch, index, 1])
    bad, used = -1, index
    try:
      image = self._read(index, rng)
    except decode.BadImageError:
      if not self.skip_bad:
        raise
      bad = index
      for step in range(1, _BAD_RETRIES + 1):
        used = (index + step) % len(self.labels)
        try:
          image = self._read(used, rng)
          break
        except decode.BadImageError:
          continue
      else:
        raise
    return {"image": image, "label": self.labels[used],
            "bad": np.int64(bad), "global_batch": np.int64(global_batch)}


def make_dataset(dataset, batch_size, seed, augment, *, num_batches,
                 options=GrainOptions(), start_batch=0, process_index=0,
                 process_count=1):
  """The grain.IterDataset of global batches start_batch .. num_batches - 1
  (this process's rows of each): {'image', 'label', 'bad', 'global_batch'}."""
  if batch_size % process_count:
    raise ValueError(f"config.data.batch_size={batch_size} does not split "
                     f"evenly over {process_count} processes")
  rows = batch_size // process_count
  order = _TrainOrder(len(dataset), batch_size, seed, process_index * rows,
                      rows)
  # Labels read per example (tfds_images.RecordLabels: from the record the
  # worker reads for the image) stay so; others are arrays.
  labels = dataset.labels
  if not hasattr(labels, "records"):
    labels = np.asarray(labels)
  read = _ReadExample(dataset.images, labels, augment, seed, options.skip_bad)
  slots = grain.MapDataset.range(start_batch * rows, num_batches * rows)
  batches = slots.map(order).map(read).batch(rows, drop_remainder=True)
  workers = options.num_workers
  if workers == 0:  # threads in this process (PIL decodes without the GIL),
    # one batch each in flight (the buffer bounds the batches in flight).
    threads = available_cores()
    read_options = grain.ReadOptions(
        num_threads=threads,
        prefetch_buffer_size=max(options.prefetch, threads))
  else:  # one thread per worker process; the workers run ahead
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  iterable = batches.to_iter_dataset(read_options)
  if workers:
    # Starting workers reads absl flags; outside an absl app (pytest, a
    # notebook) none are parsed and reading one raises: keep the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=options.prefetch))
  return iterable


class _SkipCounter:
  """Counts replaced bad files; one warning per new first bad file."""

  def __init__(self, dataset):
    self.dataset, self.count, self.warned = dataset, 0, False

  def add(self, bad):
    bad = bad[bad >= 0]
    if not len(bad):
      return
    self.count += len(bad)
    if hasattr(self.dataset.images, "example_name"):
      first = self.dataset.images.example_name(int(bad[0]))
    else:
      first = f"{self.dataset.name} example {int(bad[0])}"
    warnings.warn(
        f"{self.dataset.name}: skipped {self.count} unreadable image files so "
        f"far (config.data.skip_bad=True; each replaced by the next readable "
        f"example); latest: {first}", SkippedImagesWarning, stacklevel=2)


def train_batches(dataset, batch_size, seed, start=batching.IteratorPosition(),
                  *, num_batches, augment=None, options=GrainOptions(),
                  process_index=0, process_count=1):
  """Yields (position_after, batch) as batching.train_batches does, through
  Grain, until global batch num_batches.

  batch: {'image': uint8 [b, H, W, C], 'label': [b, ...]} with
  b = batch_size / process_count, this process's rows. position_after: an
  IteratorPosition whose `state` holds the Grain iterator state after the
  batch. Closing the generator stops the worker processes. A worker's
  exception (e.g. decode.BadImageError naming the file) is raised here; a
  worker that dies raises grain's RuntimeError with its exit code.
  """
  augment = augment or decode.HostAugment()
  per_epoch = batching.steps_per_epoch(len(dataset), batch_size)
  workers = options.num_workers
  saved = start.state or {}
  resumable = (saved.get("pipeline") == PIPELINE
               and saved.get("workers") == workers
               and saved.get("process_count") == process_count)
  first = start.epoch * per_epoch + start.batch
  built_from = saved["start"] if resumable else first
  iterator = iter(make_dataset(
      dataset, batch_size, seed, augment, num_batches=num_batches,
      options=options, start_batch=built_from, process_index=process_index,
      process_count=process_count))
  skipped = _SkipCounter(dataset)
  try:
    if resumable:
      iterator.set_state(saved["iterator"])
    for expected in range(first, num_batches):
      element = next(iterator)
      global_batch = element.pop("global_batch")
      if global_batch[0] != expected:  # a state that is not the position's
        raise ValueError(
            f"the Grain iterator state continues at batch {global_batch[0]} "
            f"but the position is batch {expected}; the checkpoint's "
            "'position' and 'state' disagree")
      skipped.add(element.pop("bad"))
      state = {"pipeline": PIPELINE, "workers": workers,
               "process_count": process_count, "start": built_from,
               "iterator": iterator.get_state()}
      after = expected + 1
      yield batching.IteratorPosition(after // per_epoch, after % per_epoch,
                                      state), element
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
