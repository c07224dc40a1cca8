"""Moving digits (generator, labels, source); 3D CNNs on clips and volumes."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import load_splits
from cnn_jax.data import moving_digits
from cnn_jax.models import MODELS
from cnn_jax.models import layers
from cnn_jax.training import steps
from configs import video_digits


def _digits(n=12, seed=0):
  rng = np.random.default_rng(seed)
  digits = np.zeros((n, 14, 14), np.uint8)
  for i in range(n):
    digits[i, rng.integers(0, 6):rng.integers(8, 14),
           rng.integers(0, 6):rng.integers(8, 14)] = rng.integers(50, 256)
  return digits


def _centre_of_mass(frames):
  """[T, H, W, 1] -> [T, 2] (row, col) of the ink."""
  frames = frames[..., 0].astype(np.float64)
  rows = np.arange(frames.shape[1])[None, :, None]
  cols = np.arange(frames.shape[2])[None, None, :]
  mass = frames.sum(axis=(1, 2))
  return np.stack([(frames * rows).sum(axis=(1, 2)) / mass,
                   (frames * cols).sum(axis=(1, 2)) / mass], axis=-1)


def test_generator_yields_the_labelled_motion():
  made = moving_digits.make_moving_digits(_digits(), 64, num_frames=8,
                                          frame_size=32, speeds=(1, 2))
  chex.assert_shape(made["clips"], (64, 8, 32, 32, 1))
  assert made["clips"].dtype == np.uint8
  assert set(made["directions"]) == set(range(8))
  for clip, direction, speed in zip(made["clips"], made["directions"],
                                    made["speeds"]):
    # The whole digit is in every frame ...
    ink = clip.reshape(8, -1).astype(np.int64).sum(axis=1)
    assert (ink == ink[0]).all() and ink[0] > 0
    # ... and moves by exactly the labelled velocity each frame.
    moves = np.diff(_centre_of_mass(clip), axis=0)
    expected = moving_digits.DIRECTIONS[direction] * speed
    np.testing.assert_allclose(moves, np.broadcast_to(expected, moves.shape),
                               atol=1e-9)


def test_generator_is_deterministic_from_its_seed():
  first = moving_digits.make_moving_digits(_digits(), 10, seed=3)
  again = moving_digits.make_moving_digits(_digits(), 10, seed=3)
  other = moving_digits.make_moving_digits(_digits(), 10, seed=4)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["clips"], other["clips"])


def test_direction_names_match_the_image_axes():
  # 'up' moves towards row 0, 'right' towards the last column.
  up = moving_digits.DIRECTION_NAMES.index("up")
  right = moving_digits.DIRECTION_NAMES.index("right")
  assert tuple(moving_digits.DIRECTIONS[up]) == (-1, 0)
  assert tuple(moving_digits.DIRECTIONS[right]) == (0, 1)


def test_too_small_frame_is_an_error_naming_the_need():
  with pytest.raises(ValueError, match="need >= 42"):
    moving_digits.make_moving_digits(_digits(), 2, num_frames=15,
                                     frame_size=32, speeds=(2,))


def test_shrink_digits_averages_2x2():
  digit = np.zeros((1, 28, 28, 1), np.uint8)
  digit[0, 0, 0] = digit[0, 0, 1] = 200
  digit[0, 27, 27] = 255
  small = moving_digits.shrink_digits(digit)
  chex.assert_shape(small, (1, 14, 14))
  assert small[0, 0, 0] == 100 and small[0, 13, 13] == 64


def test_source_clips_and_single_frames_share_labels():
  config = video_digits.get_config()
  config.data.num_train, config.data.num_test = 20, 10
  clips = load_splits(config.data)
  frame_config = video_digits.get_config("frame")
  frame_config.data.num_train, frame_config.data.num_test = 20, 10
  frames = load_splits(frame_config.data)
  assert clips["train"].example_shape == (8, 32, 32, 1)
  assert frames["train"].example_shape == (32, 32, 1)
  np.testing.assert_array_equal(clips["test"].labels, frames["test"].labels)
  np.testing.assert_array_equal(clips["test"].images[:, 4],
                                frames["test"].images)
  assert clips["train"].class_names == moving_digits.DIRECTION_NAMES


@pytest.mark.parametrize("variant, shape", [("clip", (8, 32, 32, 1)),
                                            ("frame", (32, 32, 1))])
def test_video_configs_build_and_shapes(variant, shape):
  config = video_digits.get_config(variant)
  model = steps.create_model(config.model)
  x = jnp.zeros((3, *shape))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  chex.assert_shape(out, (3, 8))


@pytest.mark.slow  # compiling the 3D CNN's training step: ~20 s of CPU
def test_clip_config_runs_one_train_step():
  config = video_digits.get_config()
  made = moving_digits.make_moving_digits(_digits(), 8)
  state, _ = steps.create_train_state(config, jax.random.key(0),
                                      (8, 32, 32, 1), 10)
  batch = {"image": made["clips"], "label": made["directions"]}
  step = jax.jit(functools.partial(steps.train_step, mean=0.1, std=0.3,
                                   augment_config=config.data.augment.to_dict()))
  state, metrics = step(state, batch)
  chex.assert_tree_all_finite(metrics)
  assert int(state.step) == 1


def test_3d_conv_over_volumes():
  """Volumes [B, D, H, W, C] go through the same 3D layers as clips: a 3D
  conv equals the direct sum, and C3DSmall classifies volumes."""
  rng = np.random.default_rng(0)
  volume = rng.normal(size=(1, 6, 7, 8, 2)).astype(np.float32)
  conv = layers.Conv(3, (3, 3, 3), padding="VALID")
  params = conv.init(jax.random.key(0), volume)
  out = np.asarray(conv.apply(params, volume))
  kernel = np.asarray(params["params"]["kernel"])  # [3, 3, 3, 2, 3]
  chex.assert_shape(out, (1, 4, 5, 6, 3))
  for d, h, w in ((0, 0, 0), (3, 4, 5), (1, 2, 3)):
    patch = volume[0, d:d + 3, h:h + 3, w:w + 3]
    np.testing.assert_allclose(
        out[0, d, h, w], np.einsum("dhwc,dhwco->o", patch, kernel)
        + np.asarray(params["params"]["bias"]), rtol=1e-4, atol=1e-5)
  model = MODELS["c3d_small"](num_classes=3, features=(4, 8, 8, 8))
  volumes = jnp.zeros((2, 16, 16, 16, 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), volumes)
  chex.assert_shape(jax.eval_shape(functools.partial(
      model.apply, train=False), variables, volumes), (2, 3))
