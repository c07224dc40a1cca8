"""cnn_jax.data.canvas: seeded MNIST-digit canvases with boxes and masks."""

import os

import numpy as np
import pytest

from cnn_jax.data import canvas
from cnn_jax.data import idx
from tests.conftest import REPO



@pytest.fixture(scope="module")
def digits():
  """The first 300 real MNIST test digits (uint8 [300, 28, 28], labels)."""
  folder = os.path.join(REPO, "data", "mnist")
  images = idx.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
  labels = idx.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
  return images[:300], labels[:300].astype(np.int32)


def test_shapes_and_dtypes(digits):
  out = canvas.make_canvases(*digits, num_canvases=7, canvas_size=64,
                             max_digits=4)
  assert out["images"].shape == (7, 64, 64, 1)
  assert out["images"].dtype == np.uint8
  assert out["boxes"].shape == (7, 4, 4) and out["boxes"].dtype == np.float32
  assert out["classes"].shape == (7, 4) and out["classes"].dtype == np.int32
  assert out["masks"].shape == (7, 64, 64) and out["masks"].dtype == np.int32
  assert out["presence"].shape == (7, 10)


def test_deterministic_per_seed(digits):
  a = canvas.make_canvases(*digits, num_canvases=20, seed=3)
  b = canvas.make_canvases(*digits, num_canvases=20, seed=3)
  c = canvas.make_canvases(*digits, num_canvases=20, seed=4)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["images"], c["images"])


@pytest.mark.parametrize("allow_overlap", [False, True])
def test_boxes_masks_and_presence_match_the_placed_digits(digits,
                                                           allow_overlap):
  images, labels = digits
  out = canvas.make_canvases(images, labels, num_canvases=60, seed=1,
                             min_digits=1, max_digits=4,
                             allow_overlap=allow_overlap)
  ink = canvas.ink_boxes(images)
  assert set(np.unique(out["num_digits"])) <= {1, 2, 3, 4}
  for i in range(60):
    count = out["num_digits"][i]
    classes = out["classes"][i]
    assert (classes[:count] >= 0).all() and (classes[count:] == -1).all()
    assert (out["boxes"][i, count:] == 0).all()
    expected_presence = np.zeros(10, np.int32)
    expected_presence[classes[:count]] = 1
    np.testing.assert_array_equal(out["presence"][i], expected_presence)
    image = out["images"][i, :, :, 0].astype(np.int32)
    mask = out["masks"][i]
    covered = np.zeros((64, 64), bool)
    for j in range(count):
      y0, x0, y1, x1 = out["boxes"][i, j].astype(int)
      index = out["digit_index"][i, j]
      assert labels[index] == classes[j]
      # The box is the digit's tight ink box: the same size as its crop.
      iy0, ix0, iy1, ix1 = ink[index]
      assert (y1 - y0, x1 - x0) == (iy1 - iy0, ix1 - ix0)
      assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
      crop = images[index, iy0:iy1, ix0:ix1].astype(np.int32)
      # Every ink pixel of the digit shows (max-composited) inside its box.
      assert (image[y0:y1, x0:x1] >= crop).all()
      covered[y0:y1, x0:x1] = True
      if not allow_overlap:
        np.testing.assert_array_equal(image[y0:y1, x0:x1], crop)
        np.testing.assert_array_equal(
            mask[y0:y1, x0:x1] == classes[j] + 1, crop >= 128)
    # Nothing outside the boxes: no ink, no mask.
    assert (image[~covered] == 0).all()
    assert (mask[~covered] == 0).all()
    # Mask values are background or a class on the canvas.
    assert set(np.unique(mask)) <= {0} | set(classes[:count] + 1)
    if not allow_overlap:
      for j in range(count):
        for k in range(j):
          a, b = out["boxes"][i, j], out["boxes"][i, k]
          assert (a[0] >= b[2] or b[0] >= a[2] or a[1] >= b[3]
                  or b[1] >= a[3]), (i, j, k)


def test_bad_arguments_are_named(digits):
  images, labels = digits
  with pytest.raises(ValueError, match="min_digits"):
    canvas.make_canvases(images, labels, 1, min_digits=3, max_digits=2)
  with pytest.raises(ValueError, match="canvas_size=20"):
    canvas.make_canvases(images, labels, 1, canvas_size=20)
  with pytest.raises(ValueError, match="without overlap"):
    canvas.make_canvases(images, labels, 1, canvas_size=28, min_digits=4,
                         max_digits=4)
  with pytest.raises(ValueError, match="all zeros"):
    canvas.make_canvases(np.zeros((2, 28, 28), np.uint8), [0, 1], 1)


def test_canvas_splits_labels(digits):
  images, labels = digits
  from cnn_jax.data.dataset import ArrayDataset  # pylint: disable=g-import-not-at-top
  pool = {split: ArrayDataset(images[..., None], labels)
          for split in ("train", "test")}
  options = dict(canvas.CANVAS_DEFAULTS, num_train=5, num_test=3)
  multi = canvas.canvas_splits(pool, options, "presence", "m")
  masks = canvas.canvas_splits(pool, options, "masks", "m")
  assert multi["train"].labels.shape == (5, 10)
  assert multi["test"].labels.shape == (3, 10)
  assert masks["train"].labels.shape == (5, 64, 64)
  assert masks["train"].class_names[0] == "background"
  # Train and test use different seeds.
  assert not np.array_equal(multi["train"].images[:3], multi["test"].images)
