"""Images read on demand: `images[indices]` decodes just those examples.

For splits that should not (or cannot) be held in memory: a folder of JPEGs,
a TFDS array-record split. Batching indexes a LazyImages exactly like a numpy
array, so nothing downstream knows the difference.
"""

import concurrent.futures
import os

import numpy as np


def default_workers():
  return max(1, min(32, os.cpu_count() or 1))


class LazyImages:
  """uint8 [N, *example_shape] images that are read when indexed.

  Args:
    read_one: source index -> uint8 array of `example_shape`; raises with
      the culprit named (file, record) when an example cannot be read.
    count: number of examples in the source.
    example_shape: the shape every read_one result has.
    num_workers: threads reading one batch (PIL and array-record release the
      GIL, so threads decode in parallel); 0 = one per CPU core.
    indices: which source examples this view holds (default: all, in order).
  """

  def __init__(self, read_one, count, example_shape, num_workers=0,
               indices=None):
    self._read_one = read_one
    self._count = count
    self._indices = (np.arange(count) if indices is None
                     else np.asarray(indices, np.int64))
    self.example_shape = tuple(example_shape)
    self.num_workers = num_workers or default_workers()
    self._pool = None

  @classmethod
  def over_array(cls, array, num_workers=1):
    """A lazy view of an indexable array (e.g. a memmap kept on disk)."""
    return cls(lambda i: np.asarray(array[i]), len(array), array.shape[1:],
               num_workers)

  dtype = np.dtype(np.uint8)

  @property
  def shape(self):
    return (len(self._indices), *self.example_shape)

  @property
  def ndim(self):
    return 1 + len(self.example_shape)

  def __len__(self):
    return len(self._indices)

  def view(self, indices):
    """The examples at `indices` of this view, still lazy."""
    return LazyImages(self._read_one, self._count, self.example_shape,
                      self.num_workers, self._indices[np.asarray(indices)])

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)):
      return self._read_one(int(self._indices[key]))
    wanted = self._indices[key]
    out = np.empty((len(wanted), *self.example_shape), np.uint8)
    if self.num_workers == 1 or len(wanted) < 2:
      for row, source_index in enumerate(wanted):
        out[row] = self._read_one(int(source_index))
      return out
    if self._pool is None:  # made on first use: no threads at import/build
      self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers)
    for row, image in enumerate(self._pool.map(self._read_one,
                                               map(int, wanted))):
      out[row] = image
    return out

  def __getstate__(self):
    # Sent to other processes (Grain workers) without the thread pool.
    return {**self.__dict__, "_pool": None}

  def __array__(self, dtype=None, copy=None):
    del copy
    images = self[np.arange(len(self))]
    return images if dtype is None else images.astype(dtype)
