"""Variable paths and the regex patterns that select them.

A path is the '/'-joined keys of a variable inside its collection:
`layer1_0/conv1/kernel` (params), `layer1_0/bn1/mean` (batch_stats). A
pattern is a Python regex that must match a whole path (`re.fullmatch`):
`layer1_0/.*` is that block, `.*layer[12]_.*` the first two stages,
`head/.*` the simple CNN's classifier. A pattern that selects nothing is an
error naming it (it is almost always a typo).

The bottom of the transfer package: plans, restore and pretrained.py import
it, it imports none of them.
"""

import functools
import re

import jax

COLLECTIONS = ("params", "batch_stats")


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(key_path):
  """A jax key path as 'a/b/c'."""
  return "/".join(_key_name(k) for k in key_path)


def flatten(tree):
  """{'a/b/c': leaf} for every leaf of a nested dict (in tree order)."""
  return {path_str(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat):
  """The nested dict of {'a/b/c': leaf}."""
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


@functools.lru_cache(maxsize=None)
def _compile(pattern):
  return re.compile(pattern)


def matches(patterns, path):
  """Whether any of `patterns` matches the whole of `path`."""
  return any(_compile(p).fullmatch(path) for p in patterns)


def as_patterns(value, config_key):
  """A tuple of valid regexes from a config value (a str is one pattern)."""
  patterns = (value,) if isinstance(value, str) else tuple(value)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f"{config_key}: {pattern!r} is not a string pattern")
    try:
      _compile(pattern)
    except re.error as e:
      raise ValueError(f"{config_key}: {pattern!r} is not a valid regular "
                       f"expression ({e})") from e
  return patterns


def select(patterns, paths, config_key="patterns"):
  """{pattern: [paths it matches]} (dry run); a pattern matching none of
  `paths` raises ValueError naming it."""
  patterns = as_patterns(patterns, config_key)
  selected = {p: [path for path in paths if _compile(p).fullmatch(path)]
              for p in patterns}
  unmatched = [p for p, hits in selected.items() if not hits]
  if unmatched:
    paths = list(paths)
    examples = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
    raise ValueError(
        f"{config_key}: pattern {', '.join(map(repr, unmatched))} matches no "
        f"variable (a pattern must match a whole path, e.g. {examples})")
  return selected


def variable_paths(variables):
  """Every path of params and batch_stats (without the collection name)."""
  return list(dict.fromkeys(
      path for collection in COLLECTIONS
      for path in flatten(variables.get(collection, {}))))
