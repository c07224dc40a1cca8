"""Image files -> uint8 arrays: PIL decoding and resizing in worker threads,
an optional on-disk cache, and bad files named or skipped (never silently).

Shared by the image-folder and CSV sources, which only decide which files
carry which labels.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import warnings

import numpy as np
from PIL import Image

from cnn_jax.data import decode
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.decode import BadImageError
from cnn_jax.data.lazy import LazyImages
from cnn_jax.data.lazy import default_workers

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_MODES = {1: "L", 3: "RGB"}
# config.data.pipeline: the in-memory iterator or Grain (input_pipeline.py);
# here because it decides whether the files are decoded up front.
PIPELINES = ("arrays", "grain")


class SkippedImagesWarning(UserWarning):
  """Some files could not be read and were left out (data.skip_bad=True)."""


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """How files become arrays (each field is a `config.data` key).

  image_size: (H, W) to resize to; empty: keep the files' size, which must
    then be the same for every file.
  channels: 3 (RGB) or 1 (grayscale); files are converted.
  num_workers: decoding threads; 0 = one per CPU core.
  skip_bad: leave unreadable files out with one counted warning, instead of
    stopping at the first with an error naming it.
  cache_dir: where decoded arrays are kept as .npy (read back memory-mapped,
    so a split larger than memory works); empty: no cache.
  in_memory: decode everything up front (False: decode each batch's images
    when it is drawn; needs skip_bad=False, as a file found bad then cannot
    be left out without changing the epoch, and no cache_dir).
  pipeline: 'arrays' (the in-memory iterator, batching.py) or 'grain'
    (grain_pipeline.py): the files stay files, decoded and cropped by Grain
    workers for training (in_memory and cache_dir are not used; skip_bad
    replaces a bad file by the next readable one).
  eval_crop_fraction: > 0: evaluation reads resize the shorter side to
    image_size / fraction and take the center crop (0.875: ImageNet's
    256 -> 224); 0: the whole image resized to image_size.
  """

  image_size: tuple = ()
  channels: int = 3
  num_workers: int = 0
  skip_bad: bool = False
  cache_dir: str = ""
  in_memory: bool = True
  pipeline: str = "arrays"
  eval_crop_fraction: float = 0.0

  @classmethod
  def from_config(cls, data_config):
    values = {f.name: data_config.get(f.name, f.default)
              for f in dataclasses.fields(cls)}
    values["image_size"] = tuple(values["image_size"] or ())
    options = cls(**values)
    if options.channels not in _MODES:
      raise ValueError(f"config.data.channels={options.channels} is not one "
                       f"of: {', '.join(map(str, _MODES))}")
    if len(options.image_size) not in (0, 2):
      raise ValueError(f"config.data.image_size={options.image_size} is not "
                       "(height, width) or empty")
    if options.pipeline not in PIPELINES:
      raise ValueError(f"config.data.pipeline={options.pipeline!r} is not "
                       f"one of: {', '.join(PIPELINES)}")
    if not 0.0 <= options.eval_crop_fraction <= 1.0:
      raise ValueError(f"config.data.eval_crop_fraction="
                       f"{options.eval_crop_fraction} is not in [0, 1]")
    if options.pipeline == "grain":
      return options
    if options.skip_bad and not options.in_memory:
      raise ValueError("config.data.skip_bad=True needs config.data."
                       "in_memory=True (bad files are found while decoding)")
    if options.cache_dir and not options.in_memory:
      raise ValueError("config.data.cache_dir is set and config.data."
                       "in_memory=False: choose one (the cache is read "
                       "memory-mapped, so it needs no memory either)")
    return options


def decode_image(path, image_size=(), channels=3):
  """One file -> uint8 [H, W, channels], resized (bilinear) to image_size."""
  try:
    with Image.open(path) as image:
      image = image.convert(_MODES[channels])
      if image_size and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]),
                             Image.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors
    raise BadImageError(f"{path}: cannot be read as an image ({e})") from e
  return array.reshape(*array.shape[:2], channels)


def _example_shape(paths, options, name):
  """[H, W, C] of every example: from image_size, else the first file."""
  if options.image_size:
    return (*options.image_size, options.channels)
  for path in paths:
    try:
      return decode_image(path, (), options.channels).shape
    except BadImageError:
      if not options.skip_bad:
        raise
  raise BadImageError(f"{name}: none of the {len(paths)} files can be read "
                      f"as an image (first: {paths[0]})")


class FileImages(LazyImages):
  """LazyImages read from image files whose paths it keeps: the Grain
  pipeline decodes (and crops) the files itself; indexing reads them as
  `read_one` does (for evaluation)."""

  def __init__(self, paths, read_one, example_shape, num_workers=0,
               indices=None):
    self.paths = np.asarray(paths, dtype=object)
    super().__init__(read_one, len(self.paths), example_shape, num_workers,
                     indices)

  def path(self, i):
    """The file of example `i` of this view."""
    return self.paths[self._indices[i]]

  def encoded(self, i):
    """(the file of example `i`, its name in errors): what the Grain
    workers decode (tfds_images.EncodedImages answers the same)."""
    path = self.path(i)
    return path, path

  def example_name(self, i):
    return self.path(i)

  def view(self, indices):
    return FileImages(self.paths, self._read_one, self.example_shape,
                      self.num_workers, self._indices[np.asarray(indices)])


def _eval_reader(paths, shape, options):
  """Resize the shorter side to size / fraction, then the center crop."""
  augment = decode.HostAugment(image_size=shape[:2], channels=shape[2])
  fraction = options.eval_crop_fraction
  return lambda i: decode.decode_file(paths[i], augment, None, fraction)


def _reader(paths, shape, options):
  if options.eval_crop_fraction:
    return _eval_reader(paths, shape, options)

  def read_one(i):
    image = decode_image(paths[i], options.image_size, options.channels)
    if image.shape != shape:
      raise BadImageError(
          f"{paths[i]}: size {image.shape[:2]} differs from {shape[:2]} "
          "(the first file's); set config.data.image_size=(H, W) to resize "
          "all files")
    return image
  return read_one


def _decode_all(paths, read_one, options, out):
  """Fills `out` [N, H, W, C] in worker threads; returns (good, errors): a
  bool mask [N] of the files that read, and the messages of the others."""
  good = np.ones(len(paths), bool)
  errors = []
  workers = options.num_workers or default_workers()
  chunk = 64 * workers  # bounded work in flight, however many files
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(paths), chunk):
      indices = range(start, min(start + chunk, len(paths)))
      futures = [pool.submit(read_one, i) for i in indices]
      for i, future in zip(indices, futures):  # file order: the same error
        try:                                   # every run
          out[i] = future.result()
        except BadImageError as e:
          if not options.skip_bad:
            for pending in futures:
              pending.cancel()
            raise
          good[i] = False
          errors.append(str(e))
  if errors:
    warnings.warn(
        f"skipped {len(errors)} of {len(paths)} image files that could not "
        f"be read (config.data.skip_bad=True); first: {errors[0]}",
        SkippedImagesWarning, stacklevel=3)
  return good, errors


def _cache_stem(paths, labels, options, name):
  """A file name that changes when any file, label or option changes."""
  digest = hashlib.sha1()
  for path in paths:
    try:
      stat = os.stat(path)
      version = f"{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:  # missing: decoding will name (or skip) it
      version = "missing"
    digest.update(f"{os.path.abspath(path)}|{version}\n".encode())
  digest.update(np.ascontiguousarray(labels).tobytes())
  digest.update(repr((options.image_size, options.channels,
                      options.skip_bad)).encode())
  safe_name = "".join(c if c.isalnum() else "_" for c in name)
  return os.path.join(os.path.expanduser(options.cache_dir),
                      f"{safe_name}-{digest.hexdigest()[:16]}")


def _cached_arrays(stem):
  return (np.load(stem + ".images.npy", mmap_mode="r"),
          np.load(stem + ".labels.npy"))


def _warn_cached_skips(stem, name):
  with open(stem + ".json", encoding="utf-8") as f:
    skipped = json.load(f)["skipped"]
  if skipped:
    warnings.warn(
        f"{name}: the cache {stem}.images.npy leaves out {len(skipped)} "
        f"unreadable image files (config.data.skip_bad=True); first: "
        f"{skipped[0]}", SkippedImagesWarning, stacklevel=3)


def _write_cache(stem, paths, read_one, shape, labels, options):
  """Decodes straight into a .npy on disk, so the split need not fit in
  memory; renames into place only when complete (an interrupted run leaves
  no half-written cache behind)."""
  os.makedirs(os.path.dirname(stem), exist_ok=True)
  partial = stem + ".partial.npy"
  out = np.lib.format.open_memmap(partial, "w+", np.uint8,
                                  (len(paths), *shape))
  try:
    good, errors = _decode_all(paths, read_one, options, out)
  except BaseException:
    del out
    os.remove(partial)
    raise
  if not good.all():  # compact: the cache holds only the readable files
    kept = np.lib.format.open_memmap(stem + ".kept.npy", "w+", np.uint8,
                                     (int(good.sum()), *shape))
    for row, source in enumerate(np.flatnonzero(good)):
      kept[row] = out[source]
    kept.flush()
    del out
    os.replace(stem + ".kept.npy", partial)
  else:
    out.flush()
    del out
  np.save(stem + ".labels.npy", labels[good])
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump({"files": len(paths), "skipped": errors}, f)
  os.replace(partial, stem + ".images.npy")


def load_image_files(paths, labels, options, name, class_names=()):
  """Files `paths` [N] with labels [N] (or [N, K]) -> ArrayDataset.

  Raises BadImageError naming the first file that cannot be read (or skips
  such files with one SkippedImagesWarning giving their number, when
  options.skip_bad).
  """
  if not paths:
    raise FileNotFoundError(f"{name}: no image files found")
  labels = np.asarray(labels, np.int32)
  shape = _example_shape(paths, options, name)
  read_one = _reader(paths, shape, options)
  if options.pipeline == "grain":
    return ArrayDataset(
        FileImages(paths, read_one, shape, options.num_workers),
        labels, name, tuple(class_names))
  if not options.in_memory:
    return ArrayDataset(
        LazyImages(read_one, len(paths), shape, options.num_workers),
        labels, name, tuple(class_names))
  if options.cache_dir:
    stem = _cache_stem(paths, labels, options, name)
    if os.path.exists(stem + ".images.npy"):
      _warn_cached_skips(stem, name)
    else:
      _write_cache(stem, paths, read_one, shape, labels, options)
    images, labels = _cached_arrays(stem)
  else:
    images = np.empty((len(paths), *shape), np.uint8)
    good, _ = _decode_all(paths, read_one, options, images)
    if not good.all():
      images, labels = images[good], labels[good]
  return ArrayDataset(images, labels, name, tuple(class_names))
