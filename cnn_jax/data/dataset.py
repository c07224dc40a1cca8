"""In-memory image classification data: the form every source returns."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """One split held in host memory.

  Attributes:
    images: uint8 [N, H, W, C] (or [N, T, C] / [N, T, H, W, C] for 1D/video).
    labels: int32 [N] class ids (or [N, L] multi-hot for multi-label tasks).
    name: a label for messages, e.g. 'mnist/train'.
  """

  images: np.ndarray
  labels: np.ndarray
  name: str = ""

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
    return ArrayDataset(self.images[indices], self.labels[indices],
                        name or self.name)


def channel_stats(images):
  """Per-channel mean and std of uint8 images, in [0, 1] units."""
  x = np.asarray(images, dtype=np.float64).reshape(-1, images.shape[-1]) / 255.
  return x.mean(axis=0).astype(np.float32), x.std(axis=0).astype(np.float32)
