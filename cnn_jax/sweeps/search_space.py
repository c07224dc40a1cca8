"""A search space: per config key, a distribution to sample trials from.

  config.sweep.space.optim = ml_collections.ConfigDict({
      "learning_rate": ("log_uniform", 1e-4, 1e-1),
      "weight_decay": ("log_uniform", 1e-6, 1e-3)})
  config.sweep.space.model = ml_collections.ConfigDict(
      {"dropout_rate": ("uniform", 0.0, 0.5)})
  config.sweep.space.seed = ("int", 0, 1000)        # low..high inclusive
  config.sweep.space.train = ml_collections.ConfigDict(
      {"label_smoothing": ("choice", (0.0, 0.05, 0.1))})

Trial t's values come from numpy's generator seeded with
(config.sweep.search_seed, t): the same config gives the same trials, and
trial t does not depend on how many trials were drawn before it (a refilled
slot of successive halving draws exactly what a fresh search would).
`perturb` (PBT's explore) multiplies a value and clips it to its bounds.
"""

import math

import ml_collections
import numpy as np

KINDS = ("log_uniform", "uniform", "int", "choice")


def _flat(space, prefix=""):
  flat = {}
  for key, value in (space or {}).items():
    name = prefix + key
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(_flat(value, name + "."))
    else:
      flat[name] = value
  return flat


def parse(space):
  """{dotted key: (kind, args)} from config.sweep.space, checked.

  Raises ValueError naming the key (config.sweep.space.<key>) for an unknown
  kind, missing or reversed bounds, a non-positive log-uniform bound or an
  empty choice.
  """
  parsed = {}
  for name, spec in sorted(_flat(space).items()):
    where = f"config.sweep.space.{name}"
    if isinstance(spec, str) or not isinstance(spec, (tuple, list)) or (
        not spec or spec[0] not in KINDS):
      raise ValueError(
          f"{where}={spec!r} is not a distribution: use (kind, ...) with kind "
          f"one of {', '.join(KINDS)}, e.g. ('log_uniform', 1e-4, 1e-1)")
    kind, args = spec[0], tuple(spec[1:])
    if kind == "choice":
      if len(args) != 1 or not isinstance(args[0], (tuple, list)) or (
          not args[0]):
        raise ValueError(f"{where}: 'choice' takes one non-empty tuple of "
                         f"values, e.g. ('choice', (0.0, 0.1)); got {spec!r}")
      parsed[name] = (kind, tuple(args[0]))
      continue
    if len(args) != 2 or not all(isinstance(a, (int, float)) and
                                 not isinstance(a, bool) for a in args):
      raise ValueError(f"{where}: {kind!r} takes two numbers (low, high); "
                       f"got {spec!r}")
    low, high = args
    if not low <= high:
      raise ValueError(f"{where}: low {low} > high {high}")
    if kind == "log_uniform" and low <= 0:
      raise ValueError(f"{where}: 'log_uniform' needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and
                              float(high).is_integer()):
      raise ValueError(f"{where}: 'int' needs integer bounds, got {spec!r}")
    parsed[name] = (kind, (low, high))
  if not parsed:
    raise ValueError("config.sweep.space is empty: give at least one key a "
                     "distribution, e.g. config.sweep.space.optim = "
                     "ConfigDict({'learning_rate': ('log_uniform', 1e-4, "
                     "1e-1)})")
  return parsed


def _draw(rng, kind, args):
  if kind == "choice":
    return args[int(rng.integers(len(args)))]
  low, high = args
  if kind == "int":
    return int(rng.integers(int(low), int(high) + 1))
  if kind == "uniform":
    return float(rng.uniform(low, high))
  return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample(parsed, seed, trial):
  """Trial `trial`'s {dotted key: value}: a pure function of (seed, trial)."""
  rng = np.random.default_rng([int(seed), int(trial)])
  return {name: _draw(rng, kind, args)
          for name, (kind, args) in sorted(parsed.items())}


def grid_size(parsed, where="config.sweep.space"):
  """The number of combinations of an all-'choice' space (a grid search)."""
  others = [n for n, (kind, _) in parsed.items() if kind != "choice"]
  if others:
    raise ValueError(f"{where}.{others[0]}: a grid search takes 'choice' "
                     "distributions only (the values to combine)")
  return math.prod(len(args) for _, args in parsed.values())


def grid_point(parsed, trial):
  """Combination `trial` of an all-'choice' space, in itertools.product
  order over the keys sorted by name (the last varies fastest)."""
  values = {}
  for name in sorted(parsed, reverse=True):
    choices = parsed[name][1]
    trial, index = divmod(trial, len(choices))
    values[name] = choices[index]
  return dict(sorted(values.items()))


def bounds(parsed, name):
  """(low, high) a perturbed value of `name` is clipped to."""
  kind, args = parsed[name]
  if kind == "choice":
    numbers = [a for a in args if isinstance(a, (int, float))]
    return min(numbers), max(numbers)
  return args


def perturb(parsed, name, value, factor):
  """value * factor clipped to the key's bounds, with the value's type."""
  low, high = bounds(parsed, name)
  new = min(max(value * factor, low), high)
  return int(round(new)) if isinstance(value, int) and not isinstance(
      value, bool) else float(new)
