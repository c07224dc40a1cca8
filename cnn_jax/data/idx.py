"""Reader for the IDX format of the original MNIST files (optionally gzipped).

Format (big-endian): two zero bytes, a type code (0x08 = uint8), the number of
dimensions, one uint32 size per dimension, then the data in C order.
"""

import gzip
import os

import numpy as np

_UINT8 = 0x08


class IdxFormatError(ValueError):
  """An IDX file whose header or size does not describe its contents."""


def read_idx(path, expected_ndim=None, expected_shape_tail=None):
  """Reads an IDX file into a uint8 array, validating the header.

  Args:
    path: file name; '.gz' files are decompressed.
    expected_ndim: if given, the number of dimensions the header must state
      (1 for labels, 3 for images).
    expected_shape_tail: if given, the sizes after the first dimension, e.g.
      (28, 28) for MNIST images.

  Returns:
    uint8 array of the shape stated in the header.

  Raises:
    FileNotFoundError: the file does not exist.
    IdxFormatError: bad magic number, wrong rank/shape, or a data size that
      does not match the header; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"IDX file not found: {path}")
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # truncated or not gzip at all
    raise IdxFormatError(f"{path}: cannot be read ({e})") from e

  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise IdxFormatError(
        f"{path}: bad magic number {raw[:4].hex() or '(empty)'}; "
        "an IDX file starts with bytes 00 00 <type> <ndim>")
  if raw[2] != _UINT8:
    raise IdxFormatError(
        f"{path}: data type code 0x{raw[2]:02x} is not 0x08 (uint8)")
  ndim = raw[3]
  if expected_ndim is not None and ndim != expected_ndim:
    raise IdxFormatError(
        f"{path}: header states {ndim} dimensions, expected {expected_ndim}")
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise IdxFormatError(f"{path}: file ends inside the header")
  shape = tuple(
      int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  if expected_shape_tail is not None and shape[1:] != tuple(expected_shape_tail):
    raise IdxFormatError(
        f"{path}: header shape {shape}, expected (N, "
        f"{', '.join(map(str, expected_shape_tail))})")
  expected_bytes = int(np.prod(shape, dtype=np.int64))
  actual_bytes = len(raw) - header_size
  if actual_bytes != expected_bytes:
    raise IdxFormatError(
        f"{path}: header shape {shape} needs {expected_bytes} data bytes, "
        f"file has {actual_bytes}")
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
