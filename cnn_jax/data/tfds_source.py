"""TFDS datasets through `tfds.data_source`: array-record files read by
random access, decoded with numpy/PIL (TensorFlow is never imported).

The dataset must be prepared once in array-record format, e.g.
  tfds build mnist --data_dir=~/tensorflow_datasets --file_format=array_record
(building needs network and, for most datasets, `pip install tensorflow`;
reading afterwards needs neither).

This module decodes every image into arrays up front (or lazily per batch),
so the images must share one size; with config.data.pipeline='grain' the
'tfds' source keeps them encoded instead and the Grain workers decode and
crop each one (tfds_images.py: any size, e.g. imagenet2012).
"""

import concurrent.futures
import dataclasses

import numpy as np

from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.lazy import LazyImages
from cnn_jax.data.lazy import default_workers


@dataclasses.dataclass(frozen=True)
class TfdsOptions:
  """Which dataset, splits and features (each field a `config.data` key)."""

  tfds_name: str = ""
  tfds_train_split: str = "train"
  tfds_test_split: str = "test"
  tfds_val_split: str = ""  # e.g. 'validation'; empty: none
  tfds_image_key: str = "image"
  tfds_label_key: str = "label"
  num_workers: int = 0
  in_memory: bool = True

  @classmethod
  def from_config(cls, data_config):
    return cls(**{f.name: data_config.get(f.name, f.default)
                  for f in dataclasses.fields(cls)})

  def splits(self, example_name):
    """{our split: the TFDS split}: 'train', 'test' and, if named, 'val'.
    An empty tfds_name is an error suggesting `example_name`."""
    if not self.tfds_name:
      raise ValueError("config.data.tfds_name is empty; name a TFDS dataset, "
                       f"e.g. {example_name!r}")
    splits = {"train": self.tfds_train_split, "test": self.tfds_test_split}
    if self.tfds_val_split:
      splits["val"] = self.tfds_val_split
    return splits


def open_split(tfds, name, split, data_dir, **kwargs):
  """tfds.data_source(name, split, data_dir, **kwargs) (e.g. decoders), or
  one clear error: not a TFDS name, or not prepared in array-record format.
  """
  where = data_dir or ("the TFDS default (~/tensorflow_datasets or "
                       "$TFDS_DATA_DIR)")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None,
                            download=False, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"config.data.tfds_name={name!r} is not a TFDS dataset "
                     "(see tfds.list_builders())") from e
  except (AssertionError, RuntimeError, OSError, ValueError) as e:
    raise FileNotFoundError(
        f"TFDS dataset {name!r} split {split!r} is not prepared in "
        f"array-record format in data_dir {where}; prepare it once with "
        f"`tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'} "
        "--file_format=array_record` (needs network, and tensorflow for most "
        f"datasets), or set config.data.data_dir ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _reader(source, name, split, key):
  def read_one(i):
    try:
      return np.asarray(source[i][key], np.uint8)
    except KeyError as e:
      raise ValueError(f"TFDS {name}/{split} has no feature {key!r} "
                       "(config.data.tfds_image_key)") from e
  return read_one


def _read_split(tfds, options, split, data_dir):
  source = open_split(tfds, options.tfds_name, split, data_dir)
  count = len(source)
  if count == 0:
    raise ValueError(f"TFDS {options.tfds_name}/{split} is empty")
  read_image = _reader(source, options.tfds_name, split,
                       options.tfds_image_key)
  first = source[0]
  if options.tfds_label_key not in first:
    raise ValueError(
        f"TFDS {options.tfds_name}/{split} has no feature "
        f"{options.tfds_label_key!r} (config.data.tfds_label_key); features: "
        f"{', '.join(first)}")
  shape = np.asarray(first[options.tfds_image_key]).shape
  workers = options.num_workers or default_workers()
  name = f"{options.tfds_name}/{split}"

  def read_example(i):
    example = source[i]
    image = np.asarray(example[options.tfds_image_key], np.uint8)
    if image.shape != shape:
      raise ValueError(
          f"TFDS {name} example {i}: image shape {image.shape} differs from "
          f"{shape}; decoded into arrays the images must share one size: "
          "set config.data.pipeline='grain' (and config.data.image_size) "
          "to decode and crop each in the Grain workers")
    return image, int(example[options.tfds_label_key])

  # One pass reads every record (array-record reads release the GIL): all
  # images when in memory, else just to learn the labels.
  images = np.empty((count, *shape), np.uint8) if options.in_memory else None
  labels = np.empty(count, np.int32)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for i, (image, label) in enumerate(pool.map(read_example, range(count))):
      if images is not None:
        images[i] = image
      labels[i] = label
  if images is None:
    images = LazyImages(read_image, count, shape, options.num_workers)
  return ArrayDataset(images, labels, name)


def load_tfds(options, data_dir=""):
  """{'train', 'test'(, 'val')}: ArrayDatasets of a prepared TFDS dataset."""
  # Imported here: only this source needs TFDS (its import takes a while).
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {ours: _read_split(tfds, options, theirs, data_dir)
          for ours, theirs in options.splits("mnist").items()}


def from_config(data_dir, data_config):
  return load_tfds(TfdsOptions.from_config(data_config), data_dir)
