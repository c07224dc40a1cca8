"""Images listed in CSV files: a column of file names, a column of labels.

  filename,label            filename,labels
  img/001.png,cat           img/001.png,cat|outdoor      (multi-label, '|')

File names are relative to the CSV file's folder (or absolute). Single-label
files give int32 class ids [N]; multi-label files (config.data.multi_label)
give multi-hot int32 [N, K]. Class ids follow the sorted label names of the
training CSV, or config.data.class_names when given.
"""

import csv
import dataclasses
import os
import warnings

import numpy as np

from cnn_jax.data.folder import UnknownClassError
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.image_files import SkippedImagesWarning
from cnn_jax.data.image_files import load_image_files

MULTI_LABEL_SEPARATOR = "|"


@dataclasses.dataclass(frozen=True)
class CsvLayout:
  """Which files and columns (each field is a `config.data` key)."""

  csv_train: str = "train.csv"
  csv_test: str = "test.csv"  # optional: without it, test is split off train
  csv_val: str = "val.csv"  # optional
  file_column: str = "filename"
  label_column: str = "label"
  multi_label: bool = False

  @classmethod
  def from_config(cls, data_config):
    return cls(**{f.name: data_config.get(f.name, f.default)
                  for f in dataclasses.fields(cls)})


def read_rows(csv_path, layout):
  """[(line_number, absolute file path, [label names])] of one CSV file."""
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"CSV label file not found: {csv_path!r}")
  folder = os.path.dirname(os.path.abspath(csv_path))
  rows = []
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    for column, key in ((layout.file_column, "file_column"),
                        (layout.label_column, "label_column")):
      if column not in (reader.fieldnames or ()):
        raise ValueError(
            f"{csv_path}: no column {column!r} (config.data.{key}); columns: "
            f"{', '.join(reader.fieldnames or ())}")
    for row in reader:
      line = reader.line_num
      file_name = (row[layout.file_column] or "").strip()
      label = (row[layout.label_column] or "").strip()
      if not file_name or not label:
        raise ValueError(f"{csv_path}:{line}: empty file name or label")
      names = [n.strip() for n in label.split(MULTI_LABEL_SEPARATOR)]
      if len(names) > 1 and not layout.multi_label:
        raise ValueError(
            f"{csv_path}:{line}: label {label!r} holds several classes; set "
            "config.data.multi_label=True for multi-label files")
      rows.append((line, os.path.join(folder, file_name), names))
  return rows


def _encode(rows, class_names, layout, csv_path, skip_bad):
  """(paths, labels) for the rows whose classes are all known."""
  index = {name: i for i, name in enumerate(class_names)}
  paths, labels, unknown = [], [], []
  for line, path, names in rows:
    missing = [n for n in names if n not in index]
    if missing:
      unknown.append(f"{csv_path}:{line}: class {missing[0]!r} (for {path}) "
                     f"is not one of: {', '.join(class_names[:10])}"
                     f"{', ...' if len(class_names) > 10 else ''}")
      continue
    paths.append(path)
    if layout.multi_label:
      hot = np.zeros(len(class_names), np.int32)
      hot[[index[n] for n in names]] = 1
      labels.append(hot)
    else:
      labels.append(index[names[0]])
  if unknown:
    if not skip_bad:
      raise UnknownClassError(unknown[0])
    warnings.warn(f"skipped {len(unknown)} rows of unknown classes "
                  f"(config.data.skip_bad=True); first: {unknown[0]}",
                  SkippedImagesWarning, stacklevel=3)
  labels = np.asarray(labels, np.int32).reshape(
      len(paths), *([len(class_names)] if layout.multi_label else []))
  return paths, labels


def load_csv(data_dir, layout=CsvLayout(), options=ImageOptions(),
             class_names=(), name="csv"):
  """{'train'(, 'test', 'val')}: ArrayDatasets of the files the CSVs list."""
  csv_paths = {"train": os.path.join(data_dir, layout.csv_train)}
  for split, file_name in (("test", layout.csv_test), ("val", layout.csv_val)):
    if file_name and os.path.isfile(os.path.join(data_dir, file_name)):
      csv_paths[split] = os.path.join(data_dir, file_name)
  rows = {split: read_rows(path, layout) for split, path in csv_paths.items()}
  if not class_names:
    class_names = tuple(sorted({n for _, _, names in rows["train"]
                                for n in names}))
  splits = {}
  for split, csv_path in csv_paths.items():
    paths, labels = _encode(rows[split], class_names, layout, csv_path,
                            options.skip_bad)
    splits[split] = load_image_files(paths, labels, options,
                                     f"{name}/{split}", class_names)
  return splits


def from_config(data_dir, data_config):
  if not data_dir:
    raise ValueError("config.data.data_dir is empty; the 'csv' source needs "
                     "the folder holding the CSV files")
  return load_csv(data_dir, CsvLayout.from_config(data_config),
                  ImageOptions.from_config(data_config),
                  tuple(data_config.get("class_names", ())),
                  os.path.basename(os.path.normpath(data_dir)))
