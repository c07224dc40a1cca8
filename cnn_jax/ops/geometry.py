"""Window geometry shared by convolution and pooling: strides, padding and
output sizes along each spatial dimension.

Padding is `'valid'` (none), `'same'` (output `ceil(n / s)`, split as XLA/TF
SAME: the extra element goes on the high side), `'full'` (`m_eff - 1` on each
side, every partial overlap), an int, or a sequence with one int or
`(lo, hi)` pair per spatial dimension. A window of length m dilated by d
covers `m_eff = d * (m - 1) + 1` input positions.
"""

from typing import Sequence, Tuple, Union

import numpy as np

IntOrSeq = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]

# Spatial ranks the ops accept: 1D signals, 2D images, 3D volumes.
SPATIAL_DIMS = (1, 2, 3)

_PADDING_NAMES = ("valid", "same", "full")


def to_tuple(value: IntOrSeq, n: int, name: str) -> Tuple[int, ...]:
  """Broadcasts an int to `n` ints, or checks a sequence has `n` of them."""
  if isinstance(value, (int, np.integer)):
    values = (int(value),) * n
  else:
    values = tuple(int(v) for v in value)
    if len(values) != n:
      raise ValueError(
          f"{name}={value!r} has {len(values)} entries but the input has "
          f"{n} spatial dimension(s)")
  if any(v < 1 for v in values):
    raise ValueError(f"{name}={value!r} must be positive")
  return values


def _dim_padding(padding, n: int, m: int, stride: int, dilation: int,
                 name: str) -> Tuple[int, int]:
  """(lo, hi) padding of one spatial dim: input length n, window length m."""
  m_eff = dilation * (m - 1) + 1
  if isinstance(padding, str):
    mode = padding.lower()
    if mode == "valid":
      return (0, 0)
    if mode == "full":
      return (m_eff - 1, m_eff - 1)
    if mode == "same":
      # As XLA/TF SAME: just enough padding for ceil(n / s) outputs.
      total = max((-(-n // stride) - 1) * stride + m_eff - n, 0)
      return (total // 2, total - total // 2)
    raise ValueError(
        f"{name}={padding!r} is not one of: {', '.join(_PADDING_NAMES)}, "
        "an int, or (lo, hi) pairs")
  if isinstance(padding, (int, np.integer)):
    pair = (int(padding), int(padding))
  else:
    pair = tuple(padding)
    if len(pair) != 2 or not all(
        isinstance(p, (int, np.integer)) for p in pair):
      raise ValueError(
          f"{name}={padding!r}: each spatial dimension needs an int or a "
          "(lo, hi) pair of ints")
    pair = (int(pair[0]), int(pair[1]))
  if min(pair) < 0:
    raise ValueError(f"{name}={padding!r} must not be negative")
  return pair


def padding_pairs(padding: Padding, in_sizes: Sequence[int],
                  window: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int],
                  name: str = "padding") -> Tuple[Tuple[int, int], ...]:
  """Resolves `padding` to one (lo, hi) pair per spatial dimension."""
  n = len(in_sizes)
  if isinstance(padding, (str, int, np.integer)):
    per_dim = (padding,) * n
  else:
    per_dim = tuple(padding)
    # One spatial dim given as a bare (lo, hi) pair rather than [(lo, hi)].
    if n == 1 and len(per_dim) == 2 and all(
        isinstance(p, (int, np.integer)) for p in per_dim):
      per_dim = (per_dim,)
    if len(per_dim) != n:
      raise ValueError(
          f"{name}={padding!r} has {len(per_dim)} entries but the input has "
          f"{n} spatial dimension(s)")
  return tuple(
      _dim_padding(p, sz, m, s, d, name)
      for p, sz, m, s, d in zip(per_dim, in_sizes, window, strides, dilations))


def output_sizes(in_sizes, window, strides, dilations, pads):
  """Output length per spatial dim for resolved (lo, hi) `pads`."""
  return tuple(
      (n + lo + hi - (d * (m - 1) + 1)) // s + 1
      for n, m, s, d, (lo, hi) in zip(in_sizes, window, strides, dilations,
                                      pads))


def check_output_sizes(in_sizes, window, strides, dilations, pads, padding,
                       what: str):
  """output_sizes, or a ValueError naming `what` when a window does not fit
  the padded input."""
  out = output_sizes(in_sizes, window, strides, dilations, pads)
  if min(out) < 1:
    m_eff = tuple(d * (m - 1) + 1 for m, d in zip(window, dilations))
    raise ValueError(
        f"{what} {tuple(window)} (dilated extent {m_eff}) is larger than the "
        f"padded input: spatial shape {tuple(in_sizes)}, padding={padding!r} "
        f"-> {pads}, output would be {out}")
  return out


def output_size(n: int, m: int, padding: Union[str, int, Tuple[int, int]]
                = "valid", stride: int = 1, dilation: int = 1) -> int:
  """Output length of a convolution or pooling along one spatial dimension.

  `floor((n + p_lo + p_hi - m_eff) / s) + 1` with `m_eff = d * (m - 1) + 1`;
  `'same'` gives `ceil(n / s)`.

  Args:
    n: input length.
    m: window (kernel) length, before dilation.
    padding: `'valid'`, `'same'`, `'full'`, an int p (both sides) or a
      `(lo, hi)` pair.
    stride: step between windows.
    dilation: spacing between kernel taps.

  Returns:
    The number of output positions (at least 1).

  Raises:
    ValueError: for non-positive sizes or a window that does not fit.
  """
  for name, value in (("n", n), ("m", m), ("stride", stride),
                      ("dilation", dilation)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"output_size: {name}={value!r} must be a positive int")
  pads = padding_pairs(padding, (n,), (m,), (stride,), (dilation,))
  (out,) = check_output_sizes((n,), (m,), (stride,), (dilation,), pads,
                              padding, "window")
  return out
