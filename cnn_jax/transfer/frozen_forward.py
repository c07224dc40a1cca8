"""The forward pass with a plan's frozen variables frozen (BatchNorm too).

Frozen means bitwise unchanged by training. optimizer.py keeps frozen params
from being stepped; this module makes the forward pass agree:
  * the gradient of frozen params is stopped, so XLA does not compute it and
    it does not enter the global gradient-norm clipping;
  * a BatchNorm whose batch_stats are frozen normalises with its running
    averages in training too (as in eval), and the step hands its
    batch_stats back as it got them. Frozen weights over drifting batch
    statistics would change the frozen features all the same.

How BatchNorm is frozen without touching the models: `frozen_apply` wraps the
model's `apply` in `flax.linen.intercept_methods`; the interceptor replaces
the call of every frozen `nn.BatchNorm` by the same module cloned with
`use_running_average=True`, applied to that module's own variables (so it
never writes its statistics). As a second guard the wrapper returns, for
frozen modules, the batch_stats it was given. Dropout inside a frozen part
still drops (it has no state to protect).
"""

import functools

import flax.linen as nn
import jax

from cnn_jax.transfer import paths

def _frozen_batchnorm(plan, next_fun, args, kwargs, context):
  """Interceptor: a frozen nn.BatchNorm normalises with its running averages
  and writes nothing."""
  module = context.module
  if not (isinstance(module, nn.BatchNorm) and context.method_name ==
          "__call__"):
    return next_fun(*args, **kwargs)
  if not module.scope.path:
    # A root BatchNorm: the frozen clone applied below (the interceptor is
    # still active while it runs).
    return next_fun(*args, **kwargs)
  path = "/".join(module.scope.path)
  stats = module.variables.get("batch_stats", {})
  if not stats or not all(plan.is_frozen(f"{path}/{name}") for name in stats):
    return next_fun(*args, **kwargs)
  # use_running_average may be an attribute or a call argument (flax refuses
  # both at once): set it where the module takes it.
  kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
  if module.use_running_average is None:
    frozen = module.clone(parent=None)
    kwargs["use_running_average"] = True
  else:
    frozen = module.clone(parent=None, use_running_average=True)
  variables = {c: module.variables[c] for c in paths.COLLECTIONS
               if module.variables.get(c)}
  return frozen.apply(variables, args[0], **kwargs)


def frozen_apply(apply_fn, plan):
  """`apply_fn` (a Linen module's apply) with the plan's frozen variables
  frozen: their gradient stopped, frozen BatchNorm on running averages, and
  frozen batch_stats returned unchanged. Same signature and results
  otherwise; `.__wrapped__` is the original."""

  def stop_frozen_gradients(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (jax.lax.stop_gradient(x)
                      if plan.is_frozen(paths.path_str(p)) else x), params)

  def keep_frozen_stats(old, new):
    return jax.tree_util.tree_map_with_path(
        lambda p, o, n: o if plan.is_frozen(paths.path_str(p)) else n, old, new)

  @functools.wraps(apply_fn)
  def apply(variables, *args, **kwargs):
    variables = dict(variables)
    if "params" in variables:
      variables["params"] = stop_frozen_gradients(variables["params"])
    with nn.intercept_methods(functools.partial(_frozen_batchnorm, plan)):
      out = apply_fn(variables, *args, **kwargs)
    if kwargs.get("mutable") and "batch_stats" in variables:
      y, updates = out
      if "batch_stats" in updates:
        updates = {**updates, "batch_stats": keep_frozen_stats(
            variables["batch_stats"], updates["batch_stats"])}
      out = (y, updates)
    return out

  apply.plan = plan
  return apply
