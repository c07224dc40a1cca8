"""The settings of a search (config.sweep with search random / halving /
pbt, or grid over a space of choices): read and checked once, before any
data is loaded; every error names the config key.
"""

from cnn_jax.sweeps import search_space
from cnn_jax.sweeps import search_steps
from cnn_jax.sweeps import sweep_config

SEARCHES = ("random", "halving", "pbt")
# 'grid' over config.sweep.space (all 'choice'; no axes): every combination
# as a trial, selected on the validation split like the searches above.
HALVING_DEFAULTS = {"rungs": (1,), "eta": 2}
PBT_DEFAULTS = {"every_steps": 100, "quantile": 0.25, "factors": (0.8, 1.2)}


def is_search(config):
  """A search (cnn_jax/sweeps/search.py) rather than a sweep of fixed members."""
  if "sweep" not in config:
    return False
  kind = sweep_config.search_kind(config)
  return kind in SEARCHES or (kind == "grid" and not config.sweep.get("axes")
                              and bool(config.sweep.get("space")))


def _section(config, name, defaults):
  given = config.sweep.get(name) or {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"config.sweep.{name} has unknown keys: "
                     f"{', '.join(unknown)} (known: {', '.join(defaults)})")
  return {**defaults, **dict(given)}


def settings(config):
  """The search's checked settings (a dict); errors name the config key."""
  kind = sweep_config.search_kind(config)
  sweep_section = config.sweep
  space = search_space.parse(sweep_section.get("space"))
  sweep_config.check_keys(config, space, "config.sweep.space", sections=())
  slots = sweep_section.get("slots", 0)
  if slots < 1:
    raise ValueError(f"config.sweep.slots={slots} must be >= 1 (trials "
                     "trained at once)")
  trials = sweep_section.get("trials", 0) or slots
  if kind == "grid":
    trials = search_space.grid_size(space)
  elif trials < slots and kind != "pbt":
    raise ValueError(f"config.sweep.trials={trials} is fewer than "
                     f"config.sweep.slots={slots}")
  metric = sweep_section.get("metric", "accuracy")
  if metric not in ("accuracy", "loss"):
    raise ValueError(f"config.sweep.metric={metric!r} is not 'accuracy' or "
                     "'loss' (on the validation split)")
  found = {"kind": kind, "space": space, "slots": slots, "trials": trials,
           "seed": sweep_section.get("search_seed", 0), "metric": metric,
           "keep": 3}
  epochs = config.train.num_epochs
  if kind == "halving":
    halving = _section(config, "halving", HALVING_DEFAULTS)
    rungs = tuple(int(r) for r in halving["rungs"])
    if not rungs or list(rungs) != sorted(set(rungs)) or rungs[0] < 1 or (
        rungs[-1] >= epochs):
      raise ValueError(f"config.sweep.halving.rungs={rungs} must be rising "
                       f"epochs in [1, config.train.num_epochs={epochs})")
    if halving["eta"] < 2:
      raise ValueError(f"config.sweep.halving.eta={halving['eta']} must be "
                       ">= 2 (keep the top 1/eta at each rung)")
    found["halving"] = {"rungs": rungs, "eta": int(halving["eta"])}
  if kind == "pbt":
    pbt = _section(config, "pbt", PBT_DEFAULTS)
    if not 0.0 < pbt["quantile"] <= 0.5:
      raise ValueError(f"config.sweep.pbt.quantile={pbt['quantile']} is not "
                       "in (0, 0.5]")
    if pbt["every_steps"] < 1:
      raise ValueError(f"config.sweep.pbt.every_steps={pbt['every_steps']} "
                       "must be >= 1")
    perturbed = [n for n in space if search_steps.is_per_step(n)]
    if not perturbed:
      raise ValueError("config.sweep.space has no key PBT can change during "
                       "training (optim.*, model.dropout_rate, "
                       "train.label_smoothing)")
    found["pbt"] = {"every_steps": int(pbt["every_steps"]),
                    "quantile": float(pbt["quantile"]),
                    "factors": tuple(float(f) for f in pbt["factors"]),
                    "perturbed": perturbed}
    found["trials"] = slots
  return found
