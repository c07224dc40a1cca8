"""UCR/UEA time-series classification sets from sktime/aeon `.ts` files.

A .ts file is text: '#' comment lines, '@key value' header lines, '@data',
then one example per line. An example is its dimensions separated by ':'
(one for a univariate series), each a comma-separated list of values ('?'
for a missing one), and, when '@classLabel true ...', a last ':'-separated
field with the class label, e.g. (2 dimensions, class 'walk'):

    0.1,0.2,0.4:1.5,1.1,0.9:walk

`read_ts` returns float32 series [N, T, C] (C = dimensions) and the label of
each; `load_ucr` loads <name>_TRAIN.ts / <name>_TEST.ts of one set,
z-normalises every series (per dimension, as the UCR archive's own
preprocessing and Fawaz et al., 2019 do) and returns ArrayDatasets of float32
[N, T, C] with int32 class ids (the index in the '@classLabel' list).

Series of unequal length are an error unless `variable_length='pad'`, which
zero-pads each series at its end (after z-normalisation, so the padding is
the series mean) to the longest of the train and test split.

Float series travel through the training code unchanged: with
`config.data.mean`/`std` empty, train.normalization_stats measures the
per-channel mean and std (in the x/255 units augment.normalize divides by)
and normalize then computes (x - mean) / std, which for z-normalised series
is close to the identity.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from cnn_jax.data.dataset import ArrayDataset

VARIABLE_LENGTH = ("error", "pad")


class TsFormatError(ValueError):
  """A .ts file that does not follow the format; the message names the line."""


@dataclasses.dataclass(frozen=True)
class TsData:
  """The contents of one .ts file.

  Attributes:
    series: float32 [N, T, C]; with variable lengths, padded with NaN after
      each series' end (read_ts never pads silently: see `lengths`).
    lengths: int32 [N], the number of time steps of each series.
    labels: the class label string of each example ([] without labels).
    class_labels: the labels declared by '@classLabel', in declared order.
    header: every '@key value' line, keys lowercased.
  """

  series: np.ndarray
  lengths: np.ndarray
  labels: list
  class_labels: tuple
  header: dict


def _parse_value(text, path, lineno, allow_missing):
  text = text.strip()
  if text in ("?", "NaN", "nan"):
    if not allow_missing:
      raise TsFormatError(f"{path}:{lineno}: missing value {text!r}, but the "
                          "header says '@missing false'")
    return np.nan
  try:
    return float(text)
  except ValueError:
    raise TsFormatError(f"{path}:{lineno}: {text!r} is not a number") from None


def _header_bool(header, key, default, path):
  value = header.get(key)
  if value is None:
    return default
  word = value.split()[0].lower()
  if word not in ("true", "false"):
    raise TsFormatError(f"{path}: '@{key} {value}' is not true/false")
  return word == "true"


def read_ts(path, variable_length="error"):
  """Parses one .ts file.

  Args:
    path: the file.
    variable_length: 'error' (series of different lengths raise
      TsFormatError naming the first line whose length differs) or 'pad'
      (they are NaN-padded at the end; `lengths` gives the true lengths).
  Returns:
    TsData.
  Raises:
    TsFormatError: with 'path:line:' for a malformed line (a value that is
      not a number, the wrong number of dimensions or time steps, an
      undeclared class label, a header line after '@data', ...).
  """
  if variable_length not in VARIABLE_LENGTH:
    raise ValueError(f"variable_length={variable_length!r} is not one of: "
                     f"{', '.join(VARIABLE_LENGTH)}")
  header, rows, labels = {}, [], []
  in_data = False
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("@"):
        if in_data:
          raise TsFormatError(f"{path}:{lineno}: header line {line[:40]!r} "
                              "after '@data'")
        key, _, value = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
          in_data = True
          if _header_bool(header, "timestamps", False, path):
            raise TsFormatError(f"{path}: '@timeStamps true' is not "
                                "supported (only plain value lists)")
          has_labels = _header_bool(header, "classlabel", False, path)
          class_labels = (tuple(header["classlabel"].split()[1:])
                          if has_labels else ())
          allow_missing = _header_bool(header, "missing", True, path)
          dimensions = int(header.get("dimensions", "1")) if (
              not _header_bool(header, "univariate", True, path)) else 1
          declared_length = (int(header["serieslength"])
                             if "serieslength" in header else None)
          equal_length = _header_bool(header, "equallength", True, path)
        else:
          header[key] = value.strip()
        continue
      if not in_data:
        raise TsFormatError(f"{path}:{lineno}: data before '@data'")
      fields = line.split(":")
      if has_labels:
        label = fields.pop().strip()
        if label not in class_labels:
          raise TsFormatError(
              f"{path}:{lineno}: class label {label!r} is not among those "
              f"declared by @classLabel: {' '.join(class_labels)}")
        labels.append(label)
      if len(fields) != dimensions:
        raise TsFormatError(f"{path}:{lineno}: {len(fields)} dimensions, "
                            f"expected {dimensions}")
      dims = [np.array([_parse_value(v, path, lineno, allow_missing)
                        for v in field.split(",")], np.float32)
              for field in fields]
      length = len(dims[0])
      if any(len(d) != length for d in dims):
        raise TsFormatError(
            f"{path}:{lineno}: dimensions of different lengths "
            f"({', '.join(str(len(d)) for d in dims)})")
      if declared_length is not None and equal_length and (
          length != declared_length):
        raise TsFormatError(f"{path}:{lineno}: {length} time steps, but "
                            f"@seriesLength is {declared_length}")
      if variable_length == "error" and rows and length != rows[0].shape[0]:
        raise TsFormatError(
            f"{path}:{lineno}: {length} time steps, but the first series has "
            f"{rows[0].shape[0]}; series of different lengths need "
            "variable_length='pad' (config.data.variable_length='pad')")
      rows.append(np.stack(dims, axis=-1))
  if not in_data:
    raise TsFormatError(f"{path}: no '@data' line")
  if not rows:
    raise TsFormatError(f"{path}: no series after '@data'")
  lengths = np.array([len(r) for r in rows], np.int32)
  series = np.full((len(rows), lengths.max(), dimensions), np.nan, np.float32)
  for i, r in enumerate(rows):
    series[i, :len(r)] = r
  return TsData(series, lengths, labels, class_labels, header)


def z_normalize(series, lengths=None):
  """Per series and dimension: (x - mean) / std over its first `lengths`
  steps ([N, T, C] -> [N, T, C]); a constant series becomes 0. Steps past
  the length are set to 0. Missing values (NaN) are left NaN."""
  series = np.asarray(series, np.float64)
  n, t, _ = series.shape
  lengths = np.full(n, t) if lengths is None else np.asarray(lengths)
  valid = (np.arange(t)[None, :] < lengths[:, None])[..., None]
  values = np.where(valid, series, np.nan)
  mean = np.nanmean(values, axis=1, keepdims=True)
  std = np.nanstd(values, axis=1, keepdims=True)
  out = (series - mean) / np.where(std > 1e-8, std, 1.0)
  out = np.where(std > 1e-8, out, np.where(np.isnan(series), np.nan, 0.0))
  return np.where(valid, out, 0.0).astype(np.float32)


def _split_path(data_dir, name, split):
  for candidate in (os.path.join(data_dir, name, f"{name}_{split}.ts"),
                    os.path.join(data_dir, f"{name}_{split}.ts")):
    if os.path.isfile(candidate):
      return candidate
  available = sorted(d for d in os.listdir(data_dir)
                     if os.path.isdir(os.path.join(data_dir, d))) if (
                         os.path.isdir(data_dir)) else []
  raise FileNotFoundError(
      f"UCR set {name!r}: {name}_{split}.ts not found in {data_dir!r}"
      + (f" (sets there: {', '.join(available)})" if available else ""))


def load_ucr(data_dir, name, variable_length="error", znorm=True):
  """{'train', 'test'} ArrayDatasets of float32 [N, T, C] and int32 labels.

  Args:
    data_dir: a folder holding <name>/<name>_TRAIN.ts and _TEST.ts (or the
      two files directly).
    name: the set, e.g. 'GunPoint'.
    variable_length: 'error' or 'pad' (zero-pad at the end to the longest
      series of both splits, after z-normalisation).
    znorm: z-normalise each series per dimension.
  """
  parsed = {split: read_ts(_split_path(data_dir, name, split.upper()),
                           variable_length)
            for split in ("train", "test")}
  class_labels = parsed["train"].class_labels
  if parsed["test"].class_labels != class_labels:
    raise TsFormatError(
        f"{name}: train and test declare different classes "
        f"({class_labels} vs {parsed['test'].class_labels})")
  length = max(p.series.shape[1] for p in parsed.values())
  if variable_length == "error" and any(
      p.series.shape[1] != length for p in parsed.values()):
    raise TsFormatError(
        f"{name}: train series have {parsed['train'].series.shape[1]} steps, "
        f"test series {parsed['test'].series.shape[1]}; use "
        "variable_length='pad'")
  splits = {}
  for split, p in parsed.items():
    series = (z_normalize(p.series, p.lengths) if znorm
              else np.where(np.isnan(p.series), 0.0, p.series))
    if np.isnan(series).any():
      raise TsFormatError(f"{name}/{split}: missing values ('?') inside "
                          "series are not supported")
    series = np.pad(series, ((0, 0), (0, length - series.shape[1]), (0, 0)))
    ids = np.array([class_labels.index(label) for label in p.labels],
                   np.int32)
    splits[split] = ArrayDataset(series.astype(np.float32), ids,
                                 f"ucr/{name}/{split}", class_labels)
  return splits


def from_config(data_dir, data_config):
  """SOURCES entry: config.data.ucr_name (required), .variable_length
  ('error'), .znorm (True)."""
  name = data_config.get("ucr_name", "")
  if not name:
    raise ValueError("config.data.ucr_name is empty: name a UCR/UEA set, "
                     "e.g. --config.data.ucr_name=GunPoint")
  return load_ucr(data_dir, name,
                  variable_length=data_config.get("variable_length", "error"),
                  znorm=data_config.get("znorm", True))


def list_sets(data_dir) -> Optional[list]:
  """The set names in `data_dir` (folders holding a <name>_TRAIN.ts)."""
  return sorted(d for d in os.listdir(data_dir) if os.path.isfile(
      os.path.join(data_dir, d, f"{d}_TRAIN.ts")))
