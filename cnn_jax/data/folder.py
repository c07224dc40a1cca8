"""A user's image folders: `root/<class>/*.png|jpg`, one folder per class.

Layouts:
  root/train/<class>/*, root/test/<class>/* (and optionally root/val/<class>)
  root/<class>/*  (one split: load_splits splits test off with a fixed seed)
Class ids follow the sorted class-folder names of the training split (or
config.data.class_names when given).
"""

import os
import warnings

from cnn_jax.data.image_files import IMAGE_EXTENSIONS
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.image_files import SkippedImagesWarning
from cnn_jax.data.image_files import load_image_files


class UnknownClassError(ValueError):
  """A file whose class is not one of the dataset's classes."""


class IgnoredFilesWarning(UserWarning):
  """Files in the folders that are not images (counted, never silent)."""


def _visible(folder):
  return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def scan_folder(root, class_names=(), skip_bad=False):
  """(paths, labels, class_names) of the images under root/<class>/.

  A class folder not among `class_names` (when given) raises
  UnknownClassError naming it, or with skip_bad its files are left out with a
  counted warning; files that are not images are left out with a counted
  warning.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder not found: {root!r}")
  found = [d for d in _visible(root) if os.path.isdir(os.path.join(root, d))]
  if not found:
    raise FileNotFoundError(f"{root!r} has no class folders (expected "
                            "root/<class>/*.png|jpg)")
  class_names = tuple(class_names) or tuple(found)
  paths, labels, ignored, unknown = [], [], [], []
  for entry in _visible(root):
    folder = os.path.join(root, entry)
    if not os.path.isdir(folder):
      ignored.append(folder)
      continue
    for file_name in _visible(folder):
      path = os.path.join(folder, file_name)
      if entry not in class_names:
        unknown.append(path)
      elif (os.path.isfile(path)
            and file_name.lower().endswith(IMAGE_EXTENSIONS)):
        paths.append(path)
        labels.append(class_names.index(entry))
      else:
        ignored.append(path)
  if unknown:
    folder_name = os.path.basename(os.path.dirname(unknown[0]))
    shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10
                                           else "")
    message = (f"{unknown[0]}: class folder {folder_name!r} is not one of "
               f"the {len(class_names)} classes ({shown})")
    if not skip_bad:
      raise UnknownClassError(message)
    warnings.warn(f"skipped {len(unknown)} files of unknown classes "
                  f"(config.data.skip_bad=True); first: {message}",
                  SkippedImagesWarning, stacklevel=2)
  if ignored:
    warnings.warn(f"{root}: ignored {len(ignored)} entries that are not image "
                  f"files ({', '.join(IMAGE_EXTENSIONS)}) in a class folder; "
                  f"first: {ignored[0]}", IgnoredFilesWarning, stacklevel=2)
  return paths, labels, class_names


def load_image_folder(root, options=ImageOptions(), class_names=(),
                      name="folder", test_folder="test"):
  """{'train', 'test'(, 'val')} or {'train'}: ArrayDatasets of the folders.

  test_folder: the folder read as the 'test' split (config.data.test_folder;
  'val' for ImageNet, whose labelled evaluation images are val/).
  """
  folders = {"train": "train", "test": test_folder, "val": "val"}
  if test_folder == "val":
    del folders["val"]
  split_roots = {split: os.path.join(root, folder)
                 for split, folder in folders.items()
                 if os.path.isdir(os.path.join(root, folder))}
  if "train" not in split_roots:
    if split_roots:
      raise FileNotFoundError(f"{root!r} has {', '.join(split_roots)}/ but no "
                              "train/ folder")
    split_roots = {"train": root}
  splits = {}
  for split in ("train", "test", "val"):  # train first: it fixes the classes
    if split not in split_roots:
      continue
    paths, labels, class_names = scan_folder(
        split_roots[split], class_names, options.skip_bad)
    splits[split] = load_image_files(paths, labels, options,
                                     f"{name}/{split}", class_names)
  return splits


def from_config(data_dir, data_config):
  if not data_dir:
    raise ValueError("config.data.data_dir is empty; the 'image_folder' "
                     "source needs the folder holding <class>/ folders")
  return load_image_folder(data_dir, ImageOptions.from_config(data_config),
                           tuple(data_config.get("class_names", ())),
                           os.path.basename(os.path.normpath(data_dir)),
                           data_config.get("test_folder", "test"))
