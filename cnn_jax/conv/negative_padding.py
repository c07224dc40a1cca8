"""Negative convolution padding as a crop of the input.

A negative pad removes rows from the input's edge. XLA:CPU (jax 0.10.2)
gets some of these convolutions wrong: when one spatial dimension has a
negative pad on one side and a positive pad on the other, as in
((-1, 1), (0, 0)), the last output row reads past the end of the input. For
the last batch element it reads whatever memory follows the buffer, so
results come out as 1e+32 or NaN and change from run to run. (-1, 0),
(-1, -1) and input-dilated convolutions come out right; gradients do too.

`crop` slices the negative part off the input, which is the same
convolution, and leaves only non-negative padding to the convolution.
Every implementation in conv_impls gets that (XLA, oneDNN, im2col).
"""

from typing import Sequence, Tuple

from jax import lax


def _has_input_dilation(lhs_dilation) -> bool:
  return lhs_dilation is not None and any(d != 1 for d in lhs_dilation)


def crop(lhs, rhs_shape: Sequence[int], padding, lhs_dilation=None,
         dimension_numbers=None) -> Tuple[object, object]:
  """(lhs, padding) for the same convolution with no negative pad.

  Slices each negative pad off `lhs` and sets it to 0. A string padding
  ('SAME', 'VALID') or one with no negative pad is returned as it is; so is
  an input-dilated one (`lhs_dilation`), where a pad counts dilated rows.
  """
  if isinstance(padding, str) or _has_input_dilation(lhs_dilation):
    return lhs, padding
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if all(lo >= 0 and hi >= 0 for lo, hi in pads):
    return lhs, padding
  numbers = lax.conv_dimension_numbers(lhs.shape, tuple(rhs_shape),
                                       dimension_numbers)
  spatial = numbers.lhs_spec[2:]
  if len(spatial) != len(pads):
    raise ValueError(f"padding {pads} has {len(pads)} pairs for a "
                     f"convolution with {len(spatial)} spatial dimensions")
  starts = [0] * lhs.ndim
  limits = list(lhs.shape)
  for axis, (lo, hi) in zip(spatial, pads):
    starts[axis] = max(-lo, 0)
    limits[axis] = lhs.shape[axis] - max(-hi, 0)
    if limits[axis] < starts[axis]:
      raise ValueError(
          f"padding {(lo, hi)} removes more than the {lhs.shape[axis]} "
          f"input rows of dimension {axis} (input shape {lhs.shape})")
  lhs = lax.slice(lhs, starts, limits)
  return lhs, tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
