"""TFDS image classification splits kept encoded, for the Grain pipeline:
random access to each record's JPEG/PNG bytes through `tfds.data_source`,
decoded per example by the Grain workers with the image folders' path
(decode.py: reduced-size JPEG decode, random-resized crop, flip; the center
crop for evaluation). Images of any size: e.g. TFDS `imagenet2012`.

  records  TfdsRecords: tfds.data_source(name, split, data_dir) with the
           image feature left encoded (tfds.decode.SkipDecoding), opened on
           first use in each process (Grain workers open their own)
  labels   one pass over the split's records at load, in threads
           (array-record reads release the GIL); kept in
           config.data.cache_dir when set, so later runs skip the pass
  train    EncodedImages.encoded(i) -> (io.BytesIO of the bytes, the record's
           name): grain_pipeline decodes and crops it in a worker
  eval     EncodedImages[indices]: decoded in threads, the center crop
           (config.data.eval_crop_fraction) or the whole image resized

The 'tfds' source takes this path when config.data.pipeline='grain'
(from_config; 'arrays' keeps tfds_source.py: fixed-size images decoded into
arrays). A feature that is not an encoded image (a decoded Tensor) arrives
as an array and is cropped by decode.transform_array instead. TensorFlow is
never imported: TFDS parses the tf.Example records with its own protobufs.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import warnings

import numpy as np

from cnn_jax.data import decode
from cnn_jax.data import tfds_source
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.image_files import SkippedImagesWarning
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

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

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
    try:
      return self.source[index]
    except _record_errors() as e:
      raise decode.BadImageError(
          f"{self.name(index)}: cannot be read ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''})") from e

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


def _labels_cache_path(records, label_key, cache_dir):
  """A file name that changes when the split's files change."""
  info = records.source.dataset_info
  digest = hashlib.sha1(repr((records.tfds_name, records.split, label_key,
                              os.path.abspath(info.data_dir))).encode())
  for entry in sorted(os.listdir(info.data_dir)):
    stat = os.stat(os.path.join(info.data_dir, entry))
    digest.update(f"{entry}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  safe = "".join(c if c.isalnum() else "_"
                 for c in f"{records.tfds_name}_{records.split}")
  return os.path.join(os.path.expanduser(cache_dir),
                      f"{safe}-{digest.hexdigest()[:16]}.labels.npy")


def _read_labels(records, label_key, workers):
  """(int64 [N] labels of every record, bool [N] whether it could be read,
  the first unreadable record's error or None)."""
  count = len(records)
  labels = np.zeros(count, np.int64)
  readable = np.ones(count, bool)
  first_error = None

  def label(index):
    try:
      example = records.read(index)
    except decode.BadImageError as e:
      return 0, e
    if label_key not in example:
      raise ValueError(
          f"TFDS {records.tfds_name}/{records.split} has no feature "
          f"{label_key!r} (config.data.tfds_label_key); features: "
          f"{', '.join(example)}")
    return int(example[label_key]), None

  chunk = 256 * workers  # bounded work in flight, however many records
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, count, chunk):
      indices = range(start, min(start + chunk, count))
      for i, (value, error) in zip(indices, pool.map(label, indices)):
        labels[i] = value
        if error is not None:
          readable[i] = False
          first_error = first_error or error
  return labels, readable, first_error


def _labels(records, label_key, workers, cache_dir):
  """_read_labels's result, from or into cache_dir when given (and the
  split is on a local disk: the key reads its files' sizes and times)."""
  if not cache_dir or not os.path.isdir(records.source.dataset_info.data_dir):
    return _read_labels(records, label_key, workers)
  path = _labels_cache_path(records, label_key, cache_dir)
  if os.path.exists(path):
    labels = np.load(path)
    return labels, np.ones(len(labels), bool), None
  labels, readable, error = _read_labels(records, label_key, workers)
  if error is None:  # a damaged split is read again (and reported) each run
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial.npy"
    np.save(partial, labels)
    os.replace(partial, path)
  return labels, readable, error


def _class_names(records, label_key):
  feature = records.source.dataset_info.features[label_key]
  return tuple(getattr(feature, "names", None) or ())


def _feature_channels(records):
  """The image feature's channel count, if it declares one (else 0)."""
  feature = records.source.dataset_info.features[records.image_key]
  shape = getattr(feature, "shape", ()) or ()
  return shape[-1] if len(shape) == 3 and shape[-1] in (1, 3) else 0


def load_split(options, image_options, split, data_dir="", cache_dir=""):
  """One TFDS split -> ArrayDataset whose images are EncodedImages.

  options: tfds_source.TfdsOptions (name, keys); image_options: the
  image_files.ImageOptions of config.data (image_size: the model's (H, W),
  empty: the first image's size; channels; skip_bad; eval_crop_fraction;
  num_workers: threads for the label pass and evaluation reads). An
  unreadable record raises decode.BadImageError naming the dataset, split
  and index, or with skip_bad is left out with one counted warning.
  """
  records = TfdsRecords(options.tfds_name, split, data_dir,
                        options.tfds_image_key)
  if len(records) == 0:
    raise ValueError(f"TFDS {options.tfds_name}/{split} is empty")
  workers = image_options.num_workers or default_workers()
  labels, readable, error = _labels(records, options.tfds_label_key, workers,
                                    cache_dir)
  good = np.flatnonzero(readable)
  if error is not None:
    if not image_options.skip_bad:
      raise error
    warnings.warn(
        f"TFDS {options.tfds_name}/{split}: left out {len(labels) - len(good)}"
        f" of {len(labels)} records that cannot be read (config.data."
        f"skip_bad=True); first: {error}", SkippedImagesWarning, stacklevel=2)
    if not len(good):
      raise error
  channels = image_options.channels
  size = tuple(image_options.image_size)
  if not size:  # the first image's: every other is resized to it
    whole = decode.HostAugment(channels=channels)
    size = _DecodeRecord(records, whole, 0.0)(int(good[0])).shape[:2]
  augment = decode.HostAugment(image_size=size, channels=channels)
  images = EncodedImages(
      records, _DecodeRecord(records, augment,
                             image_options.eval_crop_fraction),
      (*size, channels), image_options.num_workers)
  if len(good) < len(labels):
    images = images.view(good)
  return ArrayDataset(images, labels[good].astype(np.int32),
                      f"{options.tfds_name}/{split}",
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
  cache_dir = data_config.get("cache_dir", "")
  return {ours: load_split(options, image_options, theirs, data_dir,
                           cache_dir)
          for ours, theirs in options.splits("imagenet2012").items()}
