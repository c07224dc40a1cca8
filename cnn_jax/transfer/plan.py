"""The plan of a transfer run: which group each variable is in.

`config.transfer` (default_transfer_config) becomes a `Plan`, a static,
hashable function of the variable path (paths.py), so it works for any
params tree, vmapped too. Groups (labels of `optax.multi_transform`,
optimizer.py), by `transfer.mode`:
  'frozen'    `transfer.freeze` patterns, and with mode='feature_extraction'
              the backbone (what `transfer.init_from` restores);
  'backbone'  with mode='fine_tune', the backbone, at learning_rate *
              `transfer.backbone_lr_scale`;
  'head'      everything else, at the configured learning rate;
  'unfrozen'  frozen variables that match `transfer.unfreeze`: frozen for
              `transfer.unfreeze_after_epochs` epochs, then trained at
              learning_rate * backbone_lr_scale.
`python -m cnn_jax.transfer.dry_run --config ...` prints `Plan.describe`.
"""

import dataclasses
from typing import Tuple

import jax
import ml_collections
import numpy as np

from cnn_jax.transfer import paths

MODES = ("", "feature_extraction", "fine_tune")
FROZEN, BACKBONE, HEAD, UNFROZEN = "frozen", "backbone", "head", "unfrozen"


def default_transfer_config():
  """The `config.transfer` section, everything off.

  A config without this section trains as before; configs/transfer_*.py add
  it with `config.transfer = transfer_plan.default_transfer_config()`
  (`from cnn_jax.transfer import plan as transfer_plan`).
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
    unfreeze = paths.as_patterns(transfer_config.unfreeze,
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
        load=paths.as_patterns(transfer_config.load, "config.transfer.load"),
        dont_load=paths.as_patterns(transfer_config.dont_load,
                                    "config.transfer.dont_load"),
        freeze=paths.as_patterns(transfer_config.freeze,
                                 "config.transfer.freeze"),
        mode=mode, backbone_lr_scale=scale, unfreeze=unfreeze,
        unfrozen=unfrozen)

  def is_backbone(self, path):
    """Restored from init_from (load and not dont_load)."""
    return (paths.matches(self.load, path)
            and not paths.matches(self.dont_load, path))

  def _initial_label(self, path):
    if paths.matches(self.freeze, path):
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
    if label == FROZEN and paths.matches(self.unfreeze, path):
      return UNFROZEN
    return label

  def is_frozen(self, path):
    """Whether the forward pass freezes it now."""
    label = self.label(path)
    return label == FROZEN or (label == UNFROZEN and not self.unfrozen)

  def labels(self, params):
    """The group label of every leaf of `params` (a tree of str)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: self.label(paths.path_str(p)), params)

  def check(self, variables):
    """Raises ValueError for a pattern that selects no variable, or an
    unfreeze pattern that selects no frozen one."""
    all_paths = paths.variable_paths(variables)
    for key in ("load", "dont_load", "freeze"):
      paths.select(getattr(self, key), all_paths, f"config.transfer.{key}")
    if self.unfreeze:
      for pattern, hits in paths.select(self.unfreeze, all_paths,
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
    for collection in paths.COLLECTIONS:
      for path, x in paths.flatten(variables.get(collection, {})).items():
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
