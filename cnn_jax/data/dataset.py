"""Image classification data: the form every source returns."""

import dataclasses

import numpy as np

from cnn_jax.data.lazy import LazyImages


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """One split with random access by example index.

  Attributes:
    images: uint8 [N, H, W, C] (or [N, T, C] / [N, T, H, W, C] for 1D/video):
      a numpy array, a read-only np.memmap (a cache on disk), or a
      `lazy.LazyImages` that decodes the examples a batch asks for. All three
      answer `images[int_array]` with a uint8 numpy array.
    labels: int32 [N] class ids (or [N, K] multi-hot for multi-label tasks).
    name: a label for messages, e.g. 'mnist/train'.
    class_names: the name of each class id, where the source knows them.
  """

  images: np.ndarray
  labels: np.ndarray
  name: str = ""
  class_names: tuple = ()

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(
          f"{self.name}: {len(self.images)} images but "
          f"{len(self.labels)} labels")

  def __len__(self):
    return len(self.images)

  @property
  def example_shape(self):
    return tuple(self.images.shape[1:])

  def subset(self, indices, name=None):
    """The examples at `indices`, in that order.

    Lazy or memory-mapped images stay on disk: the subset is a LazyImages
    view that reads its examples when a batch asks for them.
    """
    indices = np.asarray(indices)
    if isinstance(self.images, LazyImages):
      images = self.images.view(indices)
    elif isinstance(self.images, np.memmap):
      images = LazyImages.over_array(self.images).view(indices)
    else:
      images = self.images[indices]
    return ArrayDataset(images, self.labels[indices], name or self.name,
                        self.class_names)


def channel_stats(images, chunk=4096):
  """Per-channel mean and std of uint8 images, in [0, 1] units.

  Reads `images` in chunks, so a memory-mapped or lazily decoded split is
  measured without holding it in memory as float64.
  """
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  count = 0
  for start in range(0, len(images), chunk):
    x = np.asarray(images[np.arange(start, min(start + chunk, len(images)))],
                   np.float64).reshape(-1, channels) / 255.
    total += x.sum(axis=0)
    total_sq += np.square(x).sum(axis=0)
    count += len(x)
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(total_sq / max(count, 1) - np.square(mean), 0.0))
  return mean.astype(np.float32), std.astype(np.float32)
