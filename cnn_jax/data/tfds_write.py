"""An ImageNet-layout folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) as
TFDS `imagenet2012` in array-record format, written without network or
TensorFlow: TFDS's own Imagenet2012 builder (its features, version 5.1.0,
label names) with the split generators reading the folder instead of the
ImageNet tars (which TFDS's builder reads through TensorFlow). The JPEG
bytes are stored as they are, as the real builder stores ImageNet's, keyed
by file name (so TFDS shuffles them the same way).

Labels are the sorted class folders' indices, as the image_folder source
numbers them (ImageNet's own label order when the folder holds its 1000
wnids). `tfds.data_source('imagenet2012', data_dir=...)` then reads the copy
through the registered builder, as a `tfds build imagenet2012
--file_format=array_record` preparation. Used by the tests and
experiments/bench_input.py (generated folders).
"""

import os

import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder


def folder_files(root, split):
  """[(path, label)] of root/<split>/<wnid>/*, labels = sorted wnid order
  (as the image-folder source numbers the classes)."""
  split_root = os.path.join(root, split)
  files = []
  for label, wnid in enumerate(sorted(os.listdir(split_root))):
    for name in sorted(os.listdir(os.path.join(split_root, wnid))):
      files.append((os.path.join(split_root, wnid, name), label))
  return files


class _FromFolder(imagenet2012_dataset_builder.Builder,
                  skip_registration=True):
  """imagenet2012 generated from `folder_root` (set on the class)."""

  name = "imagenet2012"
  folder_root = ""
  replace = {}  # file name -> bytes stored instead of the file's

  @classmethod
  def _get_pkg_dir_path(cls):  # the real builder's metadata (citation etc.)
    return imagenet2012_dataset_builder.Builder._get_pkg_dir_path()  # pylint: disable=protected-access

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._examples(folder)
            for split, folder in (("train", "train"), ("validation", "val"))
            if os.path.isdir(os.path.join(self.folder_root, folder))}

  def _examples(self, folder):
    for path, label in folder_files(self.folder_root, folder):
      file_name = os.path.basename(path)
      with open(path, "rb") as f:
        image = f.read()
      yield file_name, {"image": self.replace.get(file_name, image),
                        "label": label, "file_name": file_name}


def write_tfds_imagenet(data_dir, folder_root, replace=None):
  """Writes data_dir/imagenet2012/5.1.0/ (train, and validation when val/
  exists) from folder_root/{train,val}/<wnid>/*.JPEG; returns data_dir.

  replace: {file name: bytes} stored in place of those files' bytes (e.g.
  a corrupt image).
  """
  builder_class = type("FromFolder", (_FromFolder,), {
      "name": "imagenet2012", "folder_root": folder_root,
      "replace": dict(replace or {})},
                       skip_registration=True)
  builder = builder_class(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.join(data_dir, "manual")))
  return data_dir
