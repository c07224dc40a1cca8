"""The training loop's one interface to its input: (position, host batch)
pairs from the pipeline config.data.pipeline names.

  'arrays'  batching.train_batches: indexes in-memory (or memory-mapped,
            lazily decoded) arrays in the training process; augmentation
            then runs on device inside the train step (augment.py). The
            fast path for data that fits in memory.
  'grain'   grain_pipeline.train_batches: Grain worker processes decode and
            crop image files, TFDS records' encoded images (tfds_images.py)
            or indexed arrays on the host, per example.

Both give the same batches for the same seed when the host augmentation is
off (tests/data/test_grain_pipeline.py), and positions the loop saves in
checkpoints to resume from.
"""

from cnn_jax.data import batching
from cnn_jax.data.image_files import PIPELINES


def pipeline_name(data_config):
  name = data_config.get("pipeline", "arrays")
  if name not in PIPELINES:
    raise ValueError(f"config.data.pipeline={name!r} is not one of: "
                     f"{', '.join(PIPELINES)}")
  return name


def train_batches(data_config, dataset, seed, start=batching.IteratorPosition(),
                  *, num_batches, process_index=0, process_count=1):
  """Yields (IteratorPosition after the batch, batch of numpy arrays).

  Args:
    data_config: config.data (pipeline, batch_size; for 'grain' also
      workers, prefetch, skip_bad, random_crop_scale, random_crop_ratio,
      random_flip).
    dataset: the training split (data.ArrayDataset).
    seed: config.seed: the order is a function of (seed, epoch).
    start: where to begin (a checkpoint's position).
    num_batches: global batches in the run (the loop's total steps): the
      Grain workers stop there instead of decoding ahead past the end.
    process_index, process_count: this process's rows of each global batch
      (batch_size / process_count of them; 'arrays' reads the global batch
      and keeps them, 'grain' reads only them).
  """
  batch_size = data_config.batch_size
  if batch_size % process_count:
    raise ValueError(f"config.data.batch_size={batch_size} does not split "
                     f"evenly over {process_count} processes")
  if pipeline_name(data_config) == "arrays":
    per_process = batch_size // process_count
    first = process_index * per_process
    return batching.train_batches(dataset, batch_size, seed, start,
                                  rows=slice(first, first + per_process))
  # Imported here: Grain takes ~2 s to import, and only this path needs it.
  from cnn_jax.data import grain_pipeline  # pylint: disable=g-import-not-at-top
  return grain_pipeline.train_batches(
      dataset, batch_size, seed, start, num_batches=num_batches,
      augment=grain_pipeline.host_augment(data_config, dataset.example_shape),
      options=grain_pipeline.GrainOptions.from_config(data_config),
      process_index=process_index, process_count=process_count)

