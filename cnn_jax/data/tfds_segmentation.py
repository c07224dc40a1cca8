"""Segmentation datasets from TFDS (e.g. oxford_iiit_pet): an image and a
class-per-pixel mask per example, both resized to one fixed size.

Reads through the TFDS source's `tfds.data_source` access (cnn_jax/data/
tfds_source.py: array-record files, no TensorFlow; the same 'not prepared'
message). Prepare once, e.g.
  tfds build oxford_iiit_pet --file_format=array_record

config.data keys (besides those of tfds_source.TfdsOptions: tfds_name,
tfds_train_split, tfds_test_split, tfds_val_split, tfds_image_key):
  tfds_mask_key: the mask feature ('segmentation_mask').
  image_size: (H, W) for images (bilinear) and masks (nearest neighbour).
  tfds_mask_values: the raw mask value of each class, in class order: class k
    is where the mask holds tfds_mask_values[k]. Oxford-IIIT Pet's trimaps
    hold 1 pet, 2 background, 3 border, so (2, 1, 3) gives 0 background,
    1 pet, 2 border.
  tfds_mask_other: the class of any other raw value; -1 (default): such a
    value is an error naming it.
Returns ArrayDatasets with images uint8 [N, H, W, 3] and labels int32
[N, H, W].
"""

import concurrent.futures

import numpy as np
from PIL import Image

from cnn_jax.data import tfds_source
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.data.lazy import default_workers

PET_CLASS_NAMES = ("background", "pet", "border")


def _resize(array, size, resample):
  picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  return np.asarray(picture.resize(size[::-1], resample))


def mask_classes(raw, mask_values, other=-1, where=""):
  """int32 class ids [H, W] from raw mask values [H, W]."""
  lookup = np.full(256, other, np.int32)
  for k, value in enumerate(mask_values):
    lookup[value] = k
  classes = lookup[raw]
  if other < 0 and (classes < 0).any():
    bad = sorted(set(np.unique(raw[classes < 0]).tolist()))
    raise ValueError(f"{where}: mask values {bad[:5]} are not among "
                     f"config.data.tfds_mask_values={tuple(mask_values)} "
                     "(or set config.data.tfds_mask_other to a class)")
  return classes


def _read_split(tfds, options, split, data_dir, data_config):
  size = tuple(data_config.get("image_size", ()) or ())
  if len(size) != 2:
    raise ValueError(f"config.data.image_size={size}: a TFDS segmentation "
                     "source needs (height, width) to resize to")
  mask_key = data_config.get("tfds_mask_key", "segmentation_mask")
  mask_values = tuple(data_config.get("tfds_mask_values", (2, 1, 3)))
  other = data_config.get("tfds_mask_other", -1)
  # pylint: disable-next=protected-access
  source = tfds_source.open_split(tfds, options.tfds_name, split, data_dir)
  name = f"{options.tfds_name}/{split}"
  first = source[0]
  for key, config_key in ((options.tfds_image_key, "tfds_image_key"),
                          (mask_key, "tfds_mask_key")):
    if key not in first:
      raise ValueError(f"TFDS {name} has no feature {key!r} (config.data."
                       f"{config_key}); features: {', '.join(first)}")

  def read(i):
    example = source[i]
    image = np.asarray(example[options.tfds_image_key], np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    raw = np.asarray(example[mask_key], np.uint8).reshape(
        np.asarray(example[mask_key]).shape[:2])
    return (_resize(image, size, Image.Resampling.BILINEAR),
            mask_classes(_resize(raw[..., None], size,
                                 Image.Resampling.NEAREST),
                         mask_values, other, f"TFDS {name} example {i}"))

  count = len(source)
  images = np.empty((count, *size, 3), np.uint8)
  masks = np.empty((count, *size), np.int32)
  with concurrent.futures.ThreadPoolExecutor(
      options.num_workers or default_workers()) as pool:
    for i, (image, mask) in enumerate(pool.map(read, range(count))):
      images[i], masks[i] = image, mask
  class_names = tuple(data_config.get("class_names", ()) or
                      (PET_CLASS_NAMES if len(mask_values) == 3 else ()))
  return ArrayDataset(images, masks, name, class_names)


def from_config(data_dir, data_config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  options = tfds_source.TfdsOptions.from_config(data_config)
  return {ours: _read_split(tfds, options, theirs, data_dir, data_config)
          for ours, theirs in options.splits("oxford_iiit_pet").items()}
