"""TFDS image classification splits kept encoded, for the Grain pipeline:
random access to each record's JPEG/PNG bytes through `tfds.data_source`,
decoded per example by the Grain workers with the image folders' path
(decode.py: reduced-size JPEG decode, random-resized crop, flip; the center
crop for evaluation). Images of any size: e.g. TFDS `imagenet2012`.

  records  TfdsRecords: tfds.data_source(name, split, data_dir) with the
           image feature left encoded (tfds.decode.SkipDecoding), opened on
           first use in each process (Grain workers open their own)
  train    EncodedImages.encoded(i) -> (io.BytesIO of the bytes, the record's
           name): grain_pipeline decodes and crops it in a worker, and
           takes the label from the same record (RecordLabels[i]): no pass
           over the split at load, each record read once per use
  eval     EncodedImages[indices]: decoded in threads, the center crop
           (config.data.eval_crop_fraction) or the whole image resized;
           the split's labels read once, in threads, at the first batch

The 'tfds' source takes this path when config.data.pipeline='grain'
(from_config; 'arrays' keeps tfds_source.py: fixed-size images decoded into
arrays). A feature that is not an encoded image (a decoded Tensor) arrives
as an array and is cropped by decode.transform_array instead. TensorFlow is
never imported: TFDS parses the tf.Example records with its own protobufs.
"""

import concurrent.futures
import dataclasses
import io
import os

import numpy as np

from cnn_jax.data import decode
from cnn_jax.data import tfds_source
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.lazy import LazyImages
from cnn_jax.data.lazy import default_workers


def _record_errors():
  """What reading a damaged record raises: array-record's RuntimeError
  ('Corrupted Riegeli/records file: chunk data hash mismatch ...'), the
  tf.Example parse's protobuf DecodeError, a feature's ValueError."""
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  return (RuntimeError, ValueError, OSError, message.DecodeError)


class TfdsRecords:
  """Random access to one TFDS split's records, images left encoded.

  Picklable: the data source is opened on first use in each process (Grain
  workers open their own instead of receiving an open reader).
  """

  def __init__(self, tfds_name, split, data_dir, image_key):
    self.tfds_name, self.split = tfds_name, split
    self.data_dir, self.image_key = data_dir, image_key
    self._source = None
    self._last = None  # (index, example): the image's read serves the label

  def __getstate__(self):
    return {**self.__dict__, "_source": None, "_last": None}

  @property
  def source(self):
    """The tfds data source ([index] -> {feature: value}, image bytes)."""
    if self._source is None:
      # Imported here: only this source needs TFDS (its import takes a
      # while), and in a worker only when it reads.
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._source = tfds_source.open_split(
          tfds, self.tfds_name, self.split, self.data_dir,
          decoders={self.image_key: tfds.decode.SkipDecoding()})
    return self._source

  def __len__(self):
    return len(self.source)

  def name(self, index):
    return f"TFDS {self.tfds_name}/{self.split} record {index}"

  def read(self, index):
    """Record `index` -> {feature: value}; BadImageError naming the dataset,
    split and index when it cannot be read."""
    last = self._last  # one read of the tuple: threads may replace it
    if last is not None and last[0] == index:
      return last[1]
    try:
      example = self.source[index]
    except _record_errors() as e:
      raise decode.BadImageError(
          f"{self.name(index)}: cannot be read ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    self._last = (index, example)
    return example

  def image(self, index):
    """(the encoded image as a binary file object, or a decoded uint8
    array when the feature is not an encoded image; its name)."""
    example = self.read(index)
    if self.image_key not in example:
      raise ValueError(
          f"TFDS {self.tfds_name}/{self.split} has no feature "
          f"{self.image_key!r} (config.data.tfds_image_key); features: "
          f"{', '.join(example)}")
    image = example[self.image_key]
    if isinstance(image, (bytes, np.bytes_)):
      return io.BytesIO(image), self.name(index)
    return np.asarray(image, np.uint8), self.name(index)


class _DecodeRecord:
  """Source index -> uint8 [H, W, C] without randomness (evaluation): the
  center crop for eval_fraction > 0, else the whole image resized."""

  def __init__(self, records, augment, eval_fraction):
    self.records, self.augment = records, augment
    self.eval_fraction = eval_fraction

  def __call__(self, index):
    source, name = self.records.image(index)
    if isinstance(source, np.ndarray):
      return decode.transform_array(source, self.augment, None,
                                    self.eval_fraction)
    return decode.decode_file(source, self.augment, None, self.eval_fraction,
                              name=name)


class EncodedImages(LazyImages):
  """LazyImages over a TFDS split's encoded images: the Grain pipeline
  decodes and crops `encoded(i)` itself; indexing decodes for evaluation."""

  def __init__(self, records, read_one, example_shape, num_workers=0,
               indices=None):
    self.records = records
    super().__init__(read_one, len(records), example_shape, num_workers,
                     indices)

  def encoded(self, i):
    """(example `i` undecoded: a binary file object or an array, its name in
    errors): what the Grain workers decode, as FileImages.encoded."""
    return self.records.image(int(self._indices[i]))

  def example_name(self, i):
    return self.records.name(int(self._indices[i]))

  def view(self, indices):
    return EncodedImages(self.records, self._read_one, self.example_shape,
                         self.num_workers, self._indices[np.asarray(indices)])


def _read_labels(records, label_key, indices, workers):
  """int32 labels of the records at `indices`, read in threads (array-record
  reads release the GIL); BadImageError naming the first unreadable one."""
  def label(index):
    return _label_of(records.read(index), records, label_key)

  out = np.empty(len(indices), np.int32)
  chunk = 256 * workers  # bounded work in flight, however many records
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(indices), chunk):
      part = [int(i) for i in indices[start:start + chunk]]
      out[start:start + len(part)] = list(pool.map(label, part))
  return out


def _label_of(example, records, label_key):
  if label_key not in example:
    raise ValueError(
        f"TFDS {records.tfds_name}/{records.split} has no feature "
        f"{label_key!r} (config.data.tfds_label_key); features: "
        f"{', '.join(example)}")
  return int(example[label_key])


class RecordLabels:
  """int32 [N] labels read from the records when asked for: nothing is read
  at load (ImageNet's training split is ~150 GB of records).

  labels[i] reads record i (a Grain worker has just read it for the image:
  TfdsRecords keeps the last record it read, so it is not read again);
  labels[indices] and np.asarray(labels) read every label of the split
  once, in threads, and keep them (evaluation batches, reports).
  """

  dtype = np.dtype(np.int32)
  ndim = 1

  def __init__(self, records, label_key, num_workers=0):
    self.records, self.label_key = records, label_key
    self.num_workers = num_workers or default_workers()
    self._all = None  # every record's label, once read

  def __len__(self):
    return len(self.records)

  @property
  def shape(self):
    return (len(self.records),)

  def _every_label(self):
    if self._all is None:
      self._all = _read_labels(self.records, self.label_key,
                               np.arange(len(self.records)),
                               self.num_workers)
    return self._all

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)) and self._all is None:
      index = range(len(self.records))[key]  # IndexError, negatives
      return np.int32(_label_of(self.records.read(index), self.records,
                                self.label_key))
    return self._every_label()[key]

  def __array__(self, dtype=None, copy=None):
    del copy
    labels = self._every_label()
    return labels if dtype is None else labels.astype(dtype)


def _class_names(records, label_key):
  feature = records.source.dataset_info.features[label_key]
  return tuple(getattr(feature, "names", None) or ())


def _feature_channels(records):
  """The image feature's channel count, if it declares one (else 0)."""
  feature = records.source.dataset_info.features[records.image_key]
  shape = getattr(feature, "shape", ()) or ()
  return shape[-1] if len(shape) == 3 and shape[-1] in (1, 3) else 0


def load_split(options, image_options, split, data_dir=""):
  """One TFDS split -> ArrayDataset of EncodedImages and RecordLabels
  (nothing decoded or read but the first record).

  options: tfds_source.TfdsOptions (name, keys); image_options: the
  image_files.ImageOptions of config.data (image_size: the model's (H, W),
  empty: the first image's size; channels; eval_crop_fraction; num_workers:
  threads for evaluation reads). An unreadable record raises
  decode.BadImageError naming the dataset, split and index when read (in
  training with skip_bad: replaced by the next readable one, counted).
  """
  records = TfdsRecords(options.tfds_name, split, data_dir,
                        options.tfds_image_key)
  if len(records) == 0:
    raise ValueError(f"TFDS {options.tfds_name}/{split} is empty")
  # The first record: the label feature exists (and its first image).
  _label_of(records.read(0), records, options.tfds_label_key)
  channels = image_options.channels
  size = tuple(image_options.image_size)
  if not size:  # the first image's: every other is resized to it
    whole = decode.HostAugment(channels=channels)
    size = _DecodeRecord(records, whole, 0.0)(0).shape[:2]
  augment = decode.HostAugment(image_size=size, channels=channels)
  images = EncodedImages(
      records, _DecodeRecord(records, augment,
                             image_options.eval_crop_fraction),
      (*size, channels), image_options.num_workers)
  labels = RecordLabels(records, options.tfds_label_key,
                        image_options.num_workers)
  return ArrayDataset(images, labels, f"{options.tfds_name}/{split}",
                      _class_names(records, options.tfds_label_key))


def from_config(data_dir, data_config):
  """The 'tfds' source: with config.data.pipeline='grain' splits of
  EncodedImages (any image size); else tfds_source's decoded arrays."""
  if data_config.get("pipeline", "arrays") != "grain":
    return tfds_source.from_config(data_dir, data_config)
  options = tfds_source.TfdsOptions.from_config(data_config)
  image_options = ImageOptions.from_config(data_config)
  if "channels" not in data_config:  # the feature's (1 for MNIST), else RGB
    train = TfdsRecords(options.tfds_name, options.tfds_train_split,
                        data_dir, options.tfds_image_key)
    image_options = dataclasses.replace(
        image_options, channels=_feature_channels(train) or 3)
  return {ours: load_split(options, image_options, theirs, data_dir)
          for ours, theirs in options.splits("imagenet2012").items()}
