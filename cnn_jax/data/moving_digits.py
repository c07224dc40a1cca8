"""Moving digits: Moving-MNIST-style clips of one real MNIST digit, labelled
by the direction it moves in.

Each clip holds `num_frames` frames of `frame_size` x `frame_size` pixels in
which one MNIST digit (2x2-average-pooled to 14x14) moves in a straight line
at a constant integer velocity of `speed` pixels per frame along each moving
axis, in one of 8 directions:

  0 right, 1 up-right, 2 up, 3 up-left, 4 left, 5 down-left, 6 down,
  7 down-right

The start is drawn so the digit stays inside every frame (no bounce), and
frame t shows it at start + t * velocity: the label is the motion, which no
single frame shows. (The position in one frame says a little: a digit near a
side is not moving along that axis; the middle frame's position is otherwise
the same for opposite directions.)

Clips are uint8 [N, T, H, W, 1]; labels int32 [N]. The output is a pure
function of the digit pool and the arguments (the same seed gives the same
clips); train clips use MNIST's train digits and `video_seed`, test clips its
test digits and `video_seed + 1`.

Source 'moving_digits' (config.data keys: num_train, num_test, num_frames,
frame_size, speeds, video_seed, single_frame). single_frame=True gives
the middle frame [N, H, W, 1] of the same clips, for a 2D baseline that
cannot see motion.
"""

import numpy as np

from cnn_jax.data.dataset import ArrayDataset

DIRECTION_NAMES = ("right", "up-right", "up", "up-left", "left", "down-left",
                   "down", "down-right")
# (dy, dx) per direction; y grows downwards.
DIRECTIONS = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1),
                       (1, 0), (1, 1)], np.int64)

VIDEO_DEFAULTS = {
    "num_train": 6000,
    "num_test": 1000,
    "num_frames": 8,
    "frame_size": 32,
    "speeds": (1, 2),  # pixels per frame along each moving axis
    "video_seed": 0,  # train clips: this seed; test clips: this seed + 1
    "single_frame": False,  # True: the middle frame only, [N, H, W, 1]
}


def shrink_digits(digit_images):
  """uint8 [M, 28, 28(, 1)] -> uint8 [M, 14, 14]: 2x2 average pooling."""
  images = np.asarray(digit_images)
  if images.ndim == 4:
    images = images[..., 0]
  m, h, w = images.shape
  pooled = images.reshape(m, h // 2, 2, w // 2, 2).astype(np.float32)
  return np.round(pooled.mean(axis=(2, 4))).astype(np.uint8)


def make_moving_digits(digit_images, num_clips, num_frames=8, frame_size=32,
                       speeds=(1, 2), seed=0):
  """Clips of one moving digit and the direction of its motion.

  Args:
    digit_images: uint8 [M, h, w] or [M, h, w, 1]: the digits to move (e.g.
      shrink_digits(MNIST)); a uniformly drawn one per clip.
    num_clips: N.
    num_frames: T.
    frame_size: S, the side of the square frames (the digit and its path,
      (T - 1) * max(speeds) pixels, must fit).
    speeds: the speeds to draw from, pixels per frame along each moving axis.
    seed: numpy seed; the output is a pure function of the arguments.
  Returns:
    dict: clips uint8 [N, T, S, S, 1], directions int32 [N] (index into
    DIRECTION_NAMES), speeds int32 [N], starts int32 [N, 2] (top-left corner
    (y, x) in frame 0), digit_index int32 [N].
  """
  images = np.asarray(digit_images)
  if images.ndim == 4:
    images = images[..., 0]
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f"digit images must be uint8 [M, h, w], got "
                     f"{images.dtype} {images.shape}")
  _, h, w = images.shape
  travel = (num_frames - 1) * max(speeds)
  if frame_size < max(h, w) + travel:
    raise ValueError(
        f"frame_size={frame_size} cannot hold a {h}x{w} digit moving "
        f"{travel} pixels ({num_frames} frames at speed {max(speeds)}); "
        f"need >= {max(h, w) + travel}")
  rng = np.random.default_rng(seed)
  clips = np.zeros((num_clips, num_frames, frame_size, frame_size, 1),
                   np.uint8)
  directions = rng.integers(0, len(DIRECTIONS), num_clips)
  speed = np.asarray(speeds)[rng.integers(0, len(speeds), num_clips)]
  digit_index = rng.integers(0, len(images), num_clips)
  starts = np.zeros((num_clips, 2), np.int64)
  t = np.arange(num_frames)
  for i in range(num_clips):
    velocity = DIRECTIONS[directions[i]] * speed[i]  # (dy, dx)
    span = velocity * (num_frames - 1)
    # Start so that start + span stays inside on both axes.
    for axis, size in ((0, h), (1, w)):
      low = max(0, -span[axis])
      high = frame_size - size - max(0, span[axis])
      starts[i, axis] = rng.integers(low, high + 1)
    ys = starts[i, 0] + velocity[0] * t
    xs = starts[i, 1] + velocity[1] * t
    digit = images[digit_index[i]]
    for frame, (y, x) in enumerate(zip(ys, xs)):
      clips[i, frame, y:y + h, x:x + w, 0] = digit
  return {"clips": clips, "directions": directions.astype(np.int32),
          "speeds": speed.astype(np.int32), "starts": starts.astype(np.int32),
          "digit_index": digit_index.astype(np.int32)}


def video_options(data_config):
  """VIDEO_DEFAULTS updated with the keys `data_config` sets."""
  return {k: data_config.get(k, v) for k, v in VIDEO_DEFAULTS.items()}


def moving_digit_splits(digit_splits, options):
  """{'train', 'test'} ArrayDatasets of clips [N, T, S, S, 1] (or middle
  frames [N, S, S, 1] with options['single_frame']) and direction labels."""
  splits = {}
  for offset, split in enumerate(("train", "test")):
    made = make_moving_digits(
        shrink_digits(digit_splits[split].images), options[f"num_{split}"],
        num_frames=options["num_frames"], frame_size=options["frame_size"],
        speeds=tuple(options["speeds"]), seed=options["video_seed"] + offset)
    clips = made["clips"]
    if options["single_frame"]:
      clips = np.ascontiguousarray(clips[:, options["num_frames"] // 2])
    splits[split] = ArrayDataset(clips, made["directions"],
                                 f"moving_digits/{split}", DIRECTION_NAMES)
  return splits


def from_config(data_dir, data_config):
  """Source 'moving_digits' (data_dir: MNIST, empty: the bundled copy)."""
  # Imported here: cnn_jax.data's __init__ imports this module.
  from cnn_jax.data import bundled_data_dir  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.mnist import load_mnist  # pylint: disable=g-import-not-at-top
  digits = load_mnist(data_dir or bundled_data_dir("mnist"))
  return moving_digit_splits(digits, video_options(data_config))
