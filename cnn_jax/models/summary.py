"""Parameter counts and per-layer tables, computed from shapes alone.

Everything runs under `jax.eval_shape`: a ResNet-152 or a VGG-19 at 224x224
is traced but never computed, so no parameter or activation memory is used.
"""

import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays or jax.ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


class ParameterEfficiency(NamedTuple):
  dense: int  # weights + biases of a dense layer on the flattened image
  conv: int  # weights + biases of a conv layer with the same number of units


def parameter_efficiency(height: int = 1000, width: int = 1000,
                         channels: int = 1, units: int = 100,
                         kernel_size: int = 3) -> ParameterEfficiency:
  """Parameters of `units` dense neurons vs `units` conv filters on one image.

  The lecture's point: a dense layer of 100 units on a 1000x1000 grayscale
  image needs 1000 * 1000 * 100 + 100 = 100,000,100 parameters, 100 filters
  of 3x3 need 100 * 3 * 3 + 100 = 1,000, and the latter does not grow with
  the image because every filter is shared across all positions.
  """
  dense = height * width * channels * units + units
  conv = kernel_size * kernel_size * channels * units + units
  return ParameterEfficiency(dense=dense, conv=conv)


def parameter_efficiency_text(height: int = 1000, width: int = 1000,
                              channels: int = 1, units: int = 100,
                              kernel_size: int = 3) -> str:
  """`parameter_efficiency` stated in words."""
  counts = parameter_efficiency(height, width, channels, units, kernel_size)
  k = kernel_size
  return (
      f"Parameter efficiency: a dense layer of {units} units on a "
      f"{height}x{width}x{channels} image needs {counts.dense:,} parameters "
      f"(~{counts.dense / 1e6:,.0f} million); {units} {k}x{k} conv filters "
      f"need {counts.conv:,} ({units}*{k}*{k}*{channels} weights + {units} "
      f"biases), whatever the image size.")


def _subtree(tree, path):
  for name in path:
    if name not in tree:
      return {}
    tree = tree[name]
  return tree


def layer_table(model: nn.Module, input_shape: Sequence[int],
                batch_size: int = 1, max_depth: Optional[int] = None
                ) -> Tuple[List[Tuple[str, Tuple[int, ...], int]], Any]:
  """Per-module rows (path, output shape, #params) in call order, and the variables.

  A module's #params counts its own and its submodules' 'params' (not the
  BN statistics in 'batch_stats'). `max_depth` keeps modules nested at most
  that deep (1 = direct children of the model). The returned variables
  ('params', 'batch_stats', ...) hold jax.ShapeDtypeStructs.
  """
  # eval_shape hands dicts back with sorted keys, so the call order is
  # recorded while tracing: the filter runs as each module call returns.
  finished = []

  def capture(module, method_name):
    if method_name != "__call__":
      return False
    finished.append(tuple(module.scope.path))
    return True

  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  # init's default `mutable` drops 'intermediates'; True keeps them.
  variables = jax.eval_shape(
      lambda x: model.init(rngs, x, train=False, capture_intermediates=capture,
                           mutable=True), x)
  intermediates = variables.pop("intermediates", {})
  params = variables.get("params", {})

  # Calls finish children first; a module's row goes before its children,
  # at the position of the first call that finished inside it.
  first = {}
  for i, path in enumerate(finished):
    for k in range(1, len(path) + 1):
      first.setdefault(path[:k], i)
  called = set(finished)
  paths = sorted((p for p in first if p in called),
                 key=lambda p: (first[p], len(p)))
  rows = []
  for path in paths:
    if max_depth is not None and len(path) > max_depth:
      continue
    out = jax.tree.leaves(_subtree(intermediates, path)["__call__"])[0]
    rows.append(("/".join(path), tuple(out.shape),
                 count_params(_subtree(params, path))))
  return rows, variables


def summarize(model: nn.Module, input_shape: Sequence[int],
              batch_size: int = 1, max_depth: Optional[int] = None) -> str:
  """The per-layer table and the totals as text, for `python -m cnn_jax.models`."""
  rows, variables = layer_table(model, input_shape, batch_size, max_depth)
  header = ("module", "output shape", "params")
  cells = [(path, str(list(shape)), f"{n:,}") for path, shape, n in rows]
  widths = [max(len(r[i]) for r in [header] + cells) for i in range(3)]
  rule = "-" * (sum(widths) + 4)

  def line(cell):
    return (f"{cell[0]:<{widths[0]}}  {cell[1]:<{widths[1]}}  "
            f"{cell[2]:>{widths[2]}}")

  total = count_params(variables.get("params", {}))
  stats = count_params(variables.get("batch_stats", {}))
  lines = [line(header), rule] + [line(c) for c in cells] + [rule]
  lines.append(f"Input: {[batch_size, *input_shape]}")
  lines.append(f"Total params: {total:,}")
  lines.append(f"Non-trainable batch_stats: {stats:,}")
  return "\n".join(lines)
