"""PneumoniaMNIST (MedMNIST v2): chest X-rays, normal vs pneumonia, as a
one-label multi-label task (CheXNet's Pneumonia output).

The bundled file is data/pneumonia/pneumoniamnist_reconstructed.npz (real
PneumoniaMNIST images with the official split sizes, rebuilt from public
copies; see data/README.md). Any MedMNIST-layout npz works, e.g. the
official pneumoniamnist.npz (28x28) or pneumoniamnist_64.npz:
  --config.data.data_dir=/path/to/pneumoniamnist.npz

Returns {'train', 'val', 'test'} ArrayDatasets: images uint8 [N, S, S, 1]
(resized with PIL's bilinear filter to config.data.image_size when given,
e.g. (64, 64) for a network that needs larger inputs), labels int32 [N, 1]
(1 = pneumonia), class_names ('pneumonia',).
"""

import numpy as np
from PIL import Image

from cnn_jax.data import npz
from cnn_jax.data.dataset import ArrayDataset

CLASS_NAMES = ("pneumonia",)
MEDMNIST_KEYS = ("train_images", "train_labels", "test_images", "test_labels",
                 "val_images", "val_labels")


def resize_images(images, size):
  """uint8 [N, H, W, C] -> [N, *size, C], PIL bilinear (C = 1 or 3)."""
  size = tuple(size)
  if not size or tuple(images.shape[1:3]) == size:
    return images
  if len(size) != 2:
    raise ValueError(f"config.data.image_size={size} is not (height, width)")
  out = np.empty((len(images), *size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(picture.resize(size[::-1], Image.Resampling.BILINEAR))
    out[i] = resized.reshape(*size, images.shape[-1])
  return out


def load_pneumonia(path, image_size=(), name="pneumonia"):
  """{'train', 'val', 'test'} of a MedMNIST-layout npz (file or folder)."""
  splits = npz.load_npz(path, MEDMNIST_KEYS, name=name)
  result = {}
  for split, data in splits.items():
    labels = np.asarray(data.labels)
    if labels.ndim != 1 or labels.max(initial=0) > 1:
      raise ValueError(f"{data.name}: labels must be 0 (normal) / 1 "
                       f"(pneumonia), got shape {labels.shape}, max "
                       f"{labels.max(initial=0)}")
    result[split] = ArrayDataset(resize_images(np.asarray(data.images),
                                               image_size),
                                 labels[:, None].astype(np.int32), data.name,
                                 CLASS_NAMES)
  return result


def from_config(data_dir, data_config):
  if not data_dir:
    raise ValueError("config.data.data_dir is empty and no bundled copy was "
                     "found; point it at a pneumoniamnist .npz file")
  return load_pneumonia(data_dir, tuple(data_config.get("image_size", ()) or
                                        ()))
