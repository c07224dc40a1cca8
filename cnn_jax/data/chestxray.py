"""NIH ChestX-ray14 (Wang et al., 2017) in its published folder layout.

  root/
    Data_Entry_2017.csv     'Image Index', 'Finding Labels', 'Patient ID', ...
    train_val_list.txt      one image file name per line
    test_list.txt
    images/00000001_000.png ...        (the NIH tarballs' layout), or
    images_001/images/*.png ...        (the Kaggle copy's layout)

'Finding Labels' holds '|'-separated names of the 14 findings (e.g.
'Cardiomegaly|Effusion') or 'No Finding'. Labels are multi-hot int32
[N, 14] in the order of CLASS_NAMES (CheXNet's), all zero for 'No Finding';
a name that is not a known finding raises UnknownClassError naming the CSV
line. The official lists split the data by patient (no patient is in both);
config.data.val_fraction > 0 holds out that fraction of the train_val
*patients* (not images) as 'val', with a fixed seed. Rows of the CSV in
neither list are left out.

Decoding, resizing, caching and lazy loading are the data developer's
image_files (config.data: image_size, channels, num_workers, skip_bad,
cache_dir, in_memory); CSV reading is csv_labels.read_rows. The full set
(112,120 PNGs of 1024x1024) does not fit in memory as 224x224 RGB arrays
(17 GB): use in_memory=False (decode each batch's files) or a cache_dir
(decode once into memory-mapped .npy files).
"""

import dataclasses
import os
import warnings

import numpy as np

from cnn_jax.data import csv_labels
from cnn_jax.data import splits as splits_lib
from cnn_jax.data.folder import UnknownClassError
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.image_files import SkippedImagesWarning
from cnn_jax.data.image_files import load_image_files

# CheXNet's order of the 14 findings (the order of its AUROC table).
CLASS_NAMES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration",
               "Mass", "Nodule", "Pneumonia", "Pneumothorax", "Consolidation",
               "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
               "Hernia")
NO_FINDING = "No Finding"


@dataclasses.dataclass(frozen=True)
class ChestXrayLayout:
  """File and column names (each field is a `config.data` key)."""

  csv_file: str = "Data_Entry_2017.csv"
  train_list: str = "train_val_list.txt"
  test_list: str = "test_list.txt"
  file_column: str = "Image Index"
  label_column: str = "Finding Labels"

  @classmethod
  def from_config(cls, data_config):
    return cls(**{f.name: data_config.get(f.name, f.default)
                  for f in dataclasses.fields(cls)})


def parse_findings(names, class_names, where):
  """Multi-hot int32 [L] of one row's finding names ('No Finding': zeros)."""
  hot = np.zeros(len(class_names), np.int32)
  if names == [NO_FINDING]:
    return hot
  for name in names:
    if name == NO_FINDING:
      raise ValueError(f"{where}: 'No Finding' together with findings "
                       f"{'|'.join(names)!r}")
    if name not in class_names:
      raise UnknownClassError(
          f"{where}: finding {name!r} is not one of the {len(class_names)} "
          f"labels ({', '.join(class_names)}) or {NO_FINDING!r}")
    hot[class_names.index(name)] = 1
  return hot


def _read_list(path):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"ChestX-ray14 split list not found: {path!r}")
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def _image_index(root):
  """{file name: path} of the PNGs under root/images/ and
  root/images_*/images/."""
  folders = [os.path.join(root, "images")] + sorted(
      os.path.join(root, d, "images") for d in os.listdir(root)
      if d.startswith("images_"))
  index = {}
  for folder in folders:
    if os.path.isdir(folder):
      for name in os.listdir(folder):
        index.setdefault(name, os.path.join(folder, name))
  if not index:
    raise FileNotFoundError(f"no images in {root!r}/images/ or "
                            f"{root!r}/images_*/images/")
  return index


def patient_of(file_name):
  """ChestX-ray14 names images <patient id>_<follow-up>.png."""
  return file_name.split("_")[0]


def read_labels(root, layout=ChestXrayLayout(), class_names=CLASS_NAMES):
  """{file name: multi-hot [L]} of every row of the CSV."""
  csv_path = os.path.join(root, layout.csv_file)
  rows = csv_labels.read_rows(csv_path, csv_labels.CsvLayout(
      file_column=layout.file_column, label_column=layout.label_column,
      multi_label=True))
  labels = {}
  for line, path, names in rows:
    file_name = os.path.basename(path)
    labels[file_name] = parse_findings(names, class_names,
                                       f"{csv_path}:{line}")
  return labels


def _split_files(files, labels, image_index, skip_bad, where):
  missing = [f for f in files if f not in labels or f not in image_index]
  if missing:
    first = missing[0]
    why = ("has no row in the CSV" if first not in labels
           else "is not in images/ or images_*/images/")
    message = (f"{where}: {len(missing)} of {len(files)} listed images are "
               f"missing; first: {first!r} {why}")
    if not skip_bad:
      raise FileNotFoundError(message)
    warnings.warn(message + " (left out: config.data.skip_bad=True)",
                  SkippedImagesWarning, stacklevel=3)
    files = [f for f in files if f in labels and f in image_index]
  return files


def load_chestxray14(root, layout=ChestXrayLayout(), options=ImageOptions(),
                     class_names=CLASS_NAMES, val_fraction=0.0):
  """{'train', 'test'(, 'val')}: ArrayDatasets, labels int32 [N, L]."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"ChestX-ray14 folder not found: {root!r}")
  labels = read_labels(root, layout, class_names)
  image_index = _image_index(root)
  lists = {"train": _read_list(os.path.join(root, layout.train_list)),
           "test": _read_list(os.path.join(root, layout.test_list))}
  overlap = {patient_of(f) for f in lists["train"]} & {
      patient_of(f) for f in lists["test"]}
  if overlap:
    warnings.warn(f"{len(overlap)} patients are in both {layout.train_list} "
                  f"and {layout.test_list} (e.g. {sorted(overlap)[0]}); the "
                  "official lists split by patient", stacklevel=2)
  if val_fraction:
    patients = sorted({patient_of(f) for f in lists["train"]})
    if not 0.0 < val_fraction < 1.0 or len(patients) < 2:
      raise ValueError(f"config.data.val_fraction={val_fraction} is not in "
                       f"(0, 1) or too few patients ({len(patients)})")
    held = max(1, int(round(len(patients) * val_fraction)))
    order = np.random.default_rng(splits_lib.SPLIT_SEED).permutation(
        len(patients))
    val_patients = {patients[i] for i in order[:held]}
    lists["val"] = [f for f in lists["train"] if patient_of(f) in val_patients]
    lists["train"] = [f for f in lists["train"]
                      if patient_of(f) not in val_patients]
  splits = {}
  for split, files in lists.items():
    files = _split_files(files, labels, image_index, options.skip_bad,
                         os.path.join(root, layout.test_list if split == "test"
                                      else layout.train_list))
    splits[split] = load_image_files(
        [image_index[f] for f in files],
        np.stack([labels[f] for f in files]).astype(np.int32)
        if files else np.zeros((0, len(class_names)), np.int32),
        options, f"chestxray14/{split}", class_names)
  return splits


def from_config(data_dir, data_config):
  if not data_dir:
    raise ValueError("config.data.data_dir is empty; the 'chestxray14' "
                     "source needs the folder holding Data_Entry_2017.csv, "
                     "the split lists and images/")
  class_names = tuple(data_config.get("class_names", ()) or CLASS_NAMES)
  return load_chestxray14(data_dir, ChestXrayLayout.from_config(data_config),
                          ImageOptions.from_config(data_config), class_names,
                          data_config.get("val_fraction", 0.0))
