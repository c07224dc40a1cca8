"""Matplotlib set-up shared by the figure modules (visualize.py: a run's
results; visualize_model.py: inside a model).

Importing this module selects the Agg backend, so figures are drawn without
a display. Figures are saved at `DPI` without a tight bounding box, so a PNG
is exactly `figsize * DPI` pixels. Images are [H, W, C] (C = 1 or 3) uint8
pixels or floats of any range (shown min-max scaled).
"""

import struct

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

DPI = 100


def png_size(path):
  """(width, height) in pixels of a PNG file, read from its header."""
  with open(path, "rb") as f:
    header = f.read(24)
  if header[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path} is not a PNG file")
  return struct.unpack(">II", header[16:24])


def save_figure(fig, path):
  """Writes `fig` to the PNG `path` at `DPI`, closes it; returns `path`."""
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def displayable(image):
  """[H, W] or [H, W, 3] floats in [0, 1] for imshow, from [H, W(, C)]:
  uint8-range pixels are divided by 255, [0, 1] floats kept, anything else
  min-max scaled."""
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  elif image.ndim == 3 and image.shape[-1] != 3:
    image = image.mean(axis=-1)
  if image.ndim not in (2, 3):
    raise ValueError(f"an image must be [H, W] or [H, W, C], got shape "
                     f"{image.shape}")
  lo, hi = float(image.min()), float(image.max())
  if lo >= 0.0 and hi <= 255.0 and hi > 1.0:  # pixel values
    return image / 255.0
  if lo >= 0.0 and hi <= 1.0:
    return image
  return (image - lo) / max(hi - lo, 1e-12)


def show_image(ax, image, title=None):
  """Draws `image` on the axes `ax` without ticks (grey scale for one
  channel), with an optional small title."""
  shown = displayable(image)
  ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0,
            vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=9)
