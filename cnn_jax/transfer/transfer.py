"""Transfer learning: variables chosen by path pattern, frozen through optax,
frozen BatchNorm, partial restore into a model with a new head.

Paths are the '/'-joined keys of a variable inside its collection:
`layer1_0/conv1/kernel` (params), `layer1_0/bn1/mean` (batch_stats). A
pattern is a Python regex that must match a whole path (`re.fullmatch`):
`layer1_0/.*` is that block, `.*layer[12]_.*` the first two stages,
`head/.*` the simple CNN's classifier. A pattern that selects nothing is an
error naming it (it is almost always a typo). `python -m
cnn_jax.transfer_dry_run --config ...` lists what each variable of a
config's model becomes (transfer_dry_run.py).

Frozen means bitwise unchanged by training:
  * params: in the 'frozen' group of `optax.multi_transform`, whose update is
    zero: no step, no weight decay, and no optimizer state (the other groups'
    moments hold `optax.MaskedNode` where a frozen parameter would be). The
    forward pass also stops their gradient, so XLA does not compute it and it
    does not enter the global gradient-norm clipping.
  * BatchNorm: a module whose batch_stats are frozen normalises with its
    running averages in training too (as in eval), and the step hands its
    batch_stats back as it got them. Frozen weights over drifting batch
    statistics would change the frozen features all the same.

How BatchNorm is frozen without touching the models: `frozen_apply` wraps the
model's `apply` in `flax.linen.intercept_methods`; the interceptor replaces
the call of every frozen `nn.BatchNorm` by the same module cloned with
`use_running_average=True`, applied to that module's own variables (so it
never writes its statistics). As a second guard the wrapper returns, for
frozen modules, the batch_stats it was given. Dropout inside a frozen part
still drops (it has no state to protect).

Parameter groups (labels of `optax.multi_transform`), by `transfer.mode`:
  'frozen'    `transfer.freeze` patterns, and with mode='feature_extraction'
              the backbone (what `transfer.init_from` restores);
  'backbone'  with mode='fine_tune', the backbone, at learning_rate *
              `transfer.backbone_lr_scale`;
  'head'      everything else, at the configured learning rate;
  'unfrozen'  frozen variables that match `transfer.unfreeze`: frozen for
              `transfer.unfreeze_after_epochs` epochs, then trained at
              learning_rate * backbone_lr_scale (the run's schedule from
              that step on) by an optimizer that starts there as if new.
Each trainable group is `optim.make_optimizer(config.optim, its schedule)`
without clipping; `config.optim.grad_clip_norm` clips the global norm over
all trainable gradients before the groups, as torch's clip_grad_norm_ would.

Scheduled unfreezing keeps the optimizer state's structure fixed for the
whole run (so any checkpoint restores into `create_train_state`'s state):
the 'unfrozen' group holds its moments from the start, untouched and with
updates of zero until the unfreeze step. What changes at that step is the
forward pass (gradients and BatchNorm of those variables no longer frozen):
`at_step` swaps the state's apply_fn, and a jitted step retraces once.

Partial restore (`restore_variables`): every variable selected by
`transfer.load` and not by `transfer.dont_load` is copied from the source,
which must hold it with the same shape (an error lists each missing path and
each shape mismatch with both shapes); the others keep their fresh
initialisation. Sources: a run folder (its latest intact checkpoint, via
checkpoint.py) or a weights file (.safetensors, .npz, .pth: pretrained.py).
"""

import dataclasses
import functools
import os
import re
from typing import NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnn_jax.training import optim

MODES = ("", "feature_extraction", "fine_tune")
FROZEN, BACKBONE, HEAD, UNFROZEN = "frozen", "backbone", "head", "unfrozen"
COLLECTIONS = ("params", "batch_stats")


def default_transfer_config():
  """The `config.transfer` section, everything off.

  A config without this section trains as before; configs/transfer_*.py add
  it with `config.transfer = transfer.default_transfer_config()`.
  """
  config = ml_collections.ConfigDict()
  # Initial weights: a run folder (its latest intact checkpoint; or
  # <run>/checkpoints/<step>) or a weights file (.safetensors, .npz, .pth).
  config.init_from = ""
  # Restored from init_from: paths matching `load` and not `dont_load`; the
  # rest keep their fresh initialisation (e.g. dont_load=('head/.*',)).
  config.load = (".*",)
  config.dont_load = ()
  # '': nothing implied; 'feature_extraction': the restored variables (the
  # backbone) are frozen; 'fine_tune': they train at backbone_lr_scale x lr.
  config.mode = ""
  config.backbone_lr_scale = 1.0
  # Frozen in any mode.
  config.freeze = ()
  # After this many epochs (0: never) the frozen variables matching
  # `unfreeze` train, at backbone_lr_scale x lr.
  config.unfreeze_after_epochs = 0
  config.unfreeze = ()
  return config


def is_active(transfer_config):
  """Whether `config.transfer` (None when the config has none) differs from
  the defaults; an inactive section leaves training exactly as without it."""
  if transfer_config is None:
    return False
  defaults = default_transfer_config()
  return any(transfer_config.get(key) != value
             for key, value in defaults.items())


# --- paths and patterns ------------------------------------------------------


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


def _matches(patterns, path):
  return any(_compile(p).fullmatch(path) for p in patterns)


def _as_patterns(value, config_key):
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
  patterns = _as_patterns(patterns, config_key)
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


# --- the plan: which group each path is in ------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which group each variable path belongs to: static, hashable, and a pure
  function of the path (so it works for any params tree, vmapped too).

  Group labels do not change during a run; `unfrozen` says whether the
  scheduled unfreezing has happened, which changes what `is_frozen` (the
  forward pass) says for the 'unfrozen' group.
  """

  load: Tuple[str, ...] = (".*",)
  dont_load: Tuple[str, ...] = ()
  freeze: Tuple[str, ...] = ()
  mode: str = ""
  backbone_lr_scale: float = 1.0
  unfreeze: Tuple[str, ...] = ()
  unfrozen: bool = False

  @classmethod
  def from_config(cls, transfer_config, unfrozen=False):
    mode = transfer_config.mode
    if mode not in MODES:
      raise ValueError(f"config.transfer.mode={mode!r} is not one of: "
                       + ", ".join(repr(m) for m in MODES))
    if mode and not transfer_config.init_from:
      raise ValueError(f"config.transfer.mode={mode!r} needs "
                       "config.transfer.init_from (the backbone is what it "
                       "restores)")
    after = transfer_config.unfreeze_after_epochs
    unfreeze = _as_patterns(transfer_config.unfreeze,
                            "config.transfer.unfreeze")
    if after < 0 or bool(after) != bool(unfreeze):
      raise ValueError(
          "config.transfer.unfreeze_after_epochs="
          f"{after} and config.transfer.unfreeze={unfreeze} go together: "
          "both set (epochs > 0 and patterns) or neither")
    scale = float(transfer_config.backbone_lr_scale)
    if scale < 0 or (scale != 1.0 and mode != "fine_tune" and not unfreeze):
      raise ValueError(
          f"config.transfer.backbone_lr_scale={scale} must be >= 0 and is "
          "used only with mode='fine_tune' or an unfreeze schedule")
    return cls(
        load=_as_patterns(transfer_config.load, "config.transfer.load"),
        dont_load=_as_patterns(transfer_config.dont_load,
                               "config.transfer.dont_load"),
        freeze=_as_patterns(transfer_config.freeze, "config.transfer.freeze"),
        mode=mode, backbone_lr_scale=scale, unfreeze=unfreeze,
        unfrozen=unfrozen)

  def is_backbone(self, path):
    """Restored from init_from (load and not dont_load)."""
    return _matches(self.load, path) and not _matches(self.dont_load, path)

  def _initial_label(self, path):
    if _matches(self.freeze, path):
      return FROZEN
    if self.is_backbone(path):
      if self.mode == "feature_extraction":
        return FROZEN
      if self.mode == "fine_tune":
        return BACKBONE
    return HEAD

  def label(self, path):
    """The optimizer group of a variable (fixed for the whole run)."""
    label = self._initial_label(path)
    if label == FROZEN and _matches(self.unfreeze, path):
      return UNFROZEN
    return label

  def is_frozen(self, path):
    """Whether the forward pass freezes it now."""
    label = self.label(path)
    return label == FROZEN or (label == UNFROZEN and not self.unfrozen)

  def labels(self, params):
    """The group label of every leaf of `params` (a tree of str)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: self.label(path_str(p)), params)

  def check(self, variables):
    """Raises ValueError for a pattern that selects no variable, or an
    unfreeze pattern that selects no frozen one."""
    paths = variable_paths(variables)
    for key in ("load", "dont_load", "freeze"):
      select(getattr(self, key), paths, f"config.transfer.{key}")
    if self.unfreeze:
      for pattern, hits in select(self.unfreeze, paths,
                                  "config.transfer.unfreeze").items():
        if not any(self._initial_label(p) == FROZEN for p in hits):
          raise ValueError(
              f"config.transfer.unfreeze: {pattern!r} selects no frozen "
              f"variable (it matches {', '.join(hits[:4])}, which train "
              "from the start)")

  def describe(self, variables, restored=()):
    """The dry-run table: one line per variable, its group and whether it
    was restored (`restored`: 'collection/path' strings)."""
    lines = [f"{'variable':<48} {'shape':<18} {'group':<9} from"]
    counts, restored = {}, set(restored)
    for collection in COLLECTIONS:
      for path, x in flatten(variables.get(collection, {})).items():
        group = self.label(path)
        if collection == "batch_stats" and group not in (FROZEN, UNFROZEN):
          group = "updated"  # by training, as without transfer
        source = ("init_from" if f"{collection}/{path}" in restored
                  else "fresh")
        lines.append(f"{collection + '/' + path:<48} "
                     f"{str(tuple(np.shape(x))):<18} {group:<9} {source}")
        if collection == "params":
          counts[group] = counts.get(group, 0) + int(np.size(x))
    lines.append("parameters per group: " + ", ".join(
        f"{g} {n:,}" for g, n in sorted(counts.items())))
    return "\n".join(lines)


# --- optimizer ----------------------------------------------------------------


def _keep_unchanged():
  """The frozen group's transform: optax.set_to_zero, but -0.0: p + (-0.0)
  is p bit for bit for every float p, while a -0.0 parameter + 0.0 is +0.0.
  No state."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


class StartingAtState(NamedTuple):
  count: jax.Array  # updates so far (the global step)
  inner_state: optax.OptState


def _starting_at(inner, start_step):
  """`inner`, idle before global step `start_step`: until then its updates
  are -0.0 and its state stays as initialised, so from `start_step` on it
  runs exactly as a fresh `inner` would."""

  def init(params):
    return StartingAtState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner_state, params)
    active = state.count >= start_step
    new_inner = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                             new_inner, state.inner_state)
    new_updates = jax.tree.map(
        lambda u: jnp.where(active, u, jnp.asarray(-0.0, u.dtype)),
        new_updates)
    return new_updates, StartingAtState(
        optax.safe_int32_increment(state.count), new_inner)

  return optax.GradientTransformation(init, update)


def _schedule_times(schedule, scale, offset=0):
  """scale * schedule(count + offset), keeping optim's ScaledSchedule form
  (its peak stays a hyperparameter in the optimizer state)."""
  if isinstance(schedule, optim.ScaledSchedule):
    shape = schedule.shape
    return optim.ScaledSchedule(
        schedule.peak * scale,
        (lambda count: shape(count + offset)) if offset else shape)
  if callable(schedule):
    return lambda count: scale * schedule(count + offset)
  return scale * schedule


def make_optimizer(plan, optim_config, schedule, unfreeze_step=0):
  """chain(global-norm clipping, multi_transform(one optimizer per group)).

  Args:
    plan: a Plan.
    optim_config: config.optim (grad_clip_norm applies once, globally).
    schedule: the run's learning-rate schedule (or a float).
    unfreeze_step: the global step at which the 'unfrozen' group starts
      (its optimizer counts from 0 there, so its schedule is shifted by it).
  """
  inner_config = ml_collections.ConfigDict(optim_config.to_dict())
  inner_config.grad_clip_norm = 0.0
  transforms = {
      FROZEN: _keep_unchanged(),
      HEAD: optim.make_optimizer(inner_config, schedule),
  }
  if plan.mode == "fine_tune":
    transforms[BACKBONE] = optim.make_optimizer(
        inner_config, _schedule_times(schedule, plan.backbone_lr_scale))
  if plan.unfreeze:
    transforms[UNFROZEN] = _starting_at(optim.make_optimizer(
        inner_config, _schedule_times(schedule, plan.backbone_lr_scale,
                                      unfreeze_step)), unfreeze_step)
  clip = (optax.clip_by_global_norm(optim_config.grad_clip_norm)
          if optim_config.grad_clip_norm else optax.identity())
  return optax.chain(clip, optax.multi_transform(transforms, plan.labels))


# --- the forward pass with frozen variables -----------------------------------


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
  variables = {c: module.variables[c] for c in COLLECTIONS
               if module.variables.get(c)}
  return frozen.apply(variables, args[0], **kwargs)


def frozen_apply(apply_fn, plan):
  """`apply_fn` (a Linen module's apply) with the plan's frozen variables
  frozen: their gradient stopped, frozen BatchNorm on running averages, and
  frozen batch_stats returned unchanged. Same signature and results
  otherwise; `.__wrapped__` is the original."""

  def stop_frozen_gradients(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.lax.stop_gradient(x) if plan.is_frozen(path_str(p))
        else x, params)

  def keep_frozen_stats(old, new):
    return jax.tree_util.tree_map_with_path(
        lambda p, o, n: o if plan.is_frozen(path_str(p)) else n, old, new)

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


# --- partial restore ----------------------------------------------------------


def load_source(init_from):
  """{'params', 'batch_stats'} (numpy) from a run folder or a weights file."""
  path = os.path.expanduser(init_from)
  if os.path.isdir(path):
    from cnn_jax.runs import checkpoint  # pylint: disable=import-outside-toplevel
    return checkpoint.restore_variables(path)
  if os.path.isfile(path):
    from cnn_jax.transfer import pretrained  # pylint: disable=import-outside-toplevel
    return pretrained.load(path)
  raise FileNotFoundError(
      f"config.transfer.init_from={init_from!r}: no such run folder or "
      "weights file")


def restore_variables(plan, target, source, source_name="the source"):
  """`target` with the variables the plan loads copied from `source`.

  Args:
    plan: a Plan (its load / dont_load patterns).
    target: {'params', 'batch_stats'} of the new model (fresh init).
    source: {'params', 'batch_stats'} to restore from (numpy or jax).
    source_name: names the source in error messages.
  Returns:
    (variables, restored): the merged variables (the target's structure and
    dtypes) and the sorted list of restored paths.
  Raises:
    ValueError: a selected variable is missing from the source or has
      another shape there (every such path is named, with both shapes).
  """
  merged, restored, missing, mismatched = {}, [], [], []
  for collection in COLLECTIONS:
    if collection not in target:
      continue
    available = flatten(source.get(collection, {}))

    def take(key_path, fresh, collection=collection, available=available):
      path = path_str(key_path)
      if not plan.is_backbone(path):
        return fresh
      if path not in available:
        missing.append(f"{collection}/{path}")
        return fresh
      value = available[path]
      if tuple(np.shape(value)) != tuple(fresh.shape):
        mismatched.append(f"{collection}/{path}: {tuple(np.shape(value))} in "
                          f"{source_name}, {tuple(fresh.shape)} in the model")
        return fresh
      restored.append(f"{collection}/{path}")
      return jnp.asarray(value, fresh.dtype)

    merged[collection] = jax.tree_util.tree_map_with_path(
        take, target[collection])
  problems = []
  if mismatched:
    problems.append(f"{len(mismatched)} variable(s) have another shape: "
                    + "; ".join(mismatched))
  if missing:
    problems.append(f"{len(missing)} variable(s) are not in {source_name}: "
                    + ", ".join(missing))
  if problems:
    raise ValueError(
        f"cannot restore from {source_name}: " + ". ".join(problems) +
        ". Keep their fresh initialisation with config.transfer.dont_load "
        "(e.g. ('head/.*',) for a new head), or fix config.transfer.load")
  return merged, sorted(restored)


# --- entry points for train.py -----------------------------------------------


def unfreeze_step(transfer_config, steps_per_epoch):
  """The global step at which the scheduled unfreezing happens (None: never)."""
  if transfer_config is None or not transfer_config.unfreeze_after_epochs:
    return None
  return int(transfer_config.unfreeze_after_epochs) * steps_per_epoch


def optimizer_and_apply(transfer_config, optim_config, schedule,
                        steps_per_epoch, apply_fn, variables):
  """(tx, apply_fn) of a transfer run, after checking every pattern against
  `variables` ({'params', 'batch_stats'}, arrays or shapes)."""
  plan = Plan.from_config(transfer_config)
  plan.check(variables)
  tx = make_optimizer(plan, optim_config, schedule,
                      unfreeze_step(transfer_config, steps_per_epoch) or 0)
  return tx, frozen_apply(apply_fn, plan)


def restore_init_from(state, transfer_config, report=None):
  """`state` with `transfer.init_from` restored into its params and
  batch_stats where `load`/`dont_load` say (unchanged when there is no
  init_from). `report` (e.g. print) gets a one-line summary."""
  if not is_active(transfer_config) or not transfer_config.init_from:
    return state
  plan = Plan.from_config(transfer_config)
  source = load_source(transfer_config.init_from)
  variables, restored = restore_variables(
      plan, {"params": state.params, "batch_stats": state.batch_stats},
      source, repr(transfer_config.init_from))
  if report is not None:
    fresh = [f"{c}/{p}" for c in COLLECTIONS
             for p in flatten(variables.get(c, {}))
             if f"{c}/{p}" not in restored]
    report(f"transfer: restored {len(restored)} variables from "
           f"{transfer_config.init_from}; fresh: {', '.join(fresh) or 'none'}")
  return state.replace(params=variables["params"],
                       batch_stats=variables["batch_stats"])


def at_step(state, step, transfer_config, steps_per_epoch):
  """`state` with the forward pass of the phase that global `step` is in
  (before or after the scheduled unfreezing). Cheap: call it before every
  step; it returns `state` itself unless the phase changes (or after a
  resume, whose state has the first phase's apply_fn)."""
  start = unfreeze_step(transfer_config, steps_per_epoch)
  plan = getattr(state.apply_fn, "plan", None)
  if start is None or plan is None or plan.unfrozen == (step >= start):
    return state
  return state.replace(apply_fn=frozen_apply(
      state.apply_fn.__wrapped__,
      dataclasses.replace(plan, unfrozen=step >= start)))
