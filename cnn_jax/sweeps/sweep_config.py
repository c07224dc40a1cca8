"""The sweep section of a config -> the members' configs.

A sweep is a config with a `sweep` section (configs/mnist_sweep.py):

  config.sweep.axes.seed = (0, 1)
  config.sweep.axes.optim = ml_collections.ConfigDict(
      {"learning_rate": (0.01, 0.03, 0.1)})
  config.sweep.mode = "grid"   # every combination; "zip": i-th values together
  config.sweep.chunk = 0       # members trained at once (0: all)

The axes name config keys (nested like the config; `optim.learning_rate` in
messages). Member k's config is the base config with its values set
(`member_configs`), minus the `sweep` section: exactly the config of the
single run it stands for. Grid members are numbered in the order of
itertools.product over the axes sorted by name (the last varies fastest).

Members may differ only in VARYING keys and data.augment.*, the values the
one compiled program reads as arrays (cnn_jax/sweeps/sweep_steps.py); naming any
other key in the axes is an error that names it.
"""

import itertools
import os

import ml_collections

from cnn_jax.training import optim

MODES = ("grid", "zip")
# config.sweep.search: grid / zip (the axes, as `mode`), or a search over
# config.sweep.space run by cnn_jax/sweeps/search.py.
SEARCHES = MODES + ("random", "halving", "pbt")

# Config keys members may differ in, besides every key of data.augment.
VARYING = ("seed", "optim.learning_rate", "optim.weight_decay",
           "optim.momentum", "optim.b1", "optim.b2", "model.dropout_rate",
           "train.label_smoothing")
VARYING_SECTIONS = ("data.augment",)

# Keys of the sweep section itself.
SWEEP_DEFAULTS = {"axes": None, "mode": "grid", "chunk": 0,
                  "member_devices": 1, "vmap_width": 0,
                  "conv_impl": "auto",
                  # Searches (cnn_jax/sweeps/search.py, search_space.py):
                  "search": "", "space": None, "trials": 0,
                  "search_seed": 0, "slots": 0, "metric": "accuracy",
                  "halving": None, "pbt": None}


def search_kind(config):
  """config.sweep.search, or config.sweep.mode when it is not set."""
  sweep_section = config.sweep
  kind = sweep_section.get("search", "")
  if kind:
    if kind not in SEARCHES:
      raise ValueError(f"config.sweep.search={kind!r} is not one of: "
                       f"{', '.join(SEARCHES)}")
    return kind
  mode = sweep_section.get("mode", "grid")
  if mode not in MODES:
    raise ValueError(f"config.sweep.mode={mode!r} is not one of: "
                     f"{', '.join(MODES)}")
  return mode


def is_sweep(config):
  """Whether `config` describes a sweep (has a `sweep` section with axes)."""
  return "sweep" in config and bool(_flat_axes(config.sweep.get("axes"))
                                    or _flat_axes(config.sweep.get("space")))


def _flat_axes(axes, prefix=""):
  """{'optim.learning_rate': (values...), ...} from the nested axes."""
  flat = {}
  for key, value in (axes or {}).items():
    name = prefix + key
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(_flat_axes(value, name + "."))
    else:
      flat[name] = value
  return flat


def _lookup(tree, dotted):
  """(found, value) of the dotted key in a nested dict."""
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _converted(name, value, current, where="config.sweep.axes"):
  """`value` with the type of the config's `current` value at `name`."""
  if isinstance(current, bool) or isinstance(value, bool):
    if isinstance(current, bool) and isinstance(value, bool):
      return value
  elif isinstance(current, float) and isinstance(value, (int, float)):
    return float(value)
  elif isinstance(current, int) and isinstance(value, int):
    return value
  raise ValueError(f"{where}.{name}: value {value!r} is not of the "
                   f"type of config.{name} ({type(current).__name__})")


def member_overrides(config):
  """The members' values: a list of {dotted key: value}, one per member.

  Raises ValueError naming the culprit for an unknown sweep option, mode,
  config key, a key that cannot vary, or axis values of the wrong form.
  """
  sweep_config = config.sweep
  unknown = sorted(set(sweep_config.keys()) - set(SWEEP_DEFAULTS))
  if unknown:
    raise ValueError(f"config.sweep has unknown keys: {', '.join(unknown)} "
                     f"(known: {', '.join(SWEEP_DEFAULTS)})")
  mode = search_kind(config)
  if mode not in MODES:
    raise ValueError(f"config.sweep.search={mode!r} samples trials from "
                     "config.sweep.space (cnn_jax/sweeps/search.py), it has "
                     "no fixed members")
  axes = _flat_axes(sweep_config.get("axes"))
  if not axes:
    raise ValueError("config.sweep.axes is empty: name at least one config "
                     "key and its values, e.g. config.sweep.axes.seed = (0, 1)")
  base = config.to_dict()
  check_keys(config, axes, "config.sweep.axes")
  names = sorted(axes)
  values = {}
  for name in names:
    raw = axes[name]
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__") or (
        len(raw) == 0):
      raise ValueError(f"config.sweep.axes.{name} must be a non-empty tuple "
                       f"or list of values, got {raw!r}")
    current = _lookup(base, name)[1]
    values[name] = [_converted(name, v, current) for v in raw]
  if "model.dropout_rate" in values:
    bad = [v for v in values["model.dropout_rate"] if not 0.0 <= v < 1.0]
    if bad:
      raise ValueError(f"config.sweep.axes.model.dropout_rate: {bad} not in "
                       "[0, 1)")
  if mode == "grid":
    rows = itertools.product(*(values[n] for n in names))
  else:
    lengths = {n: len(values[n]) for n in names}
    if len(set(lengths.values())) > 1:
      raise ValueError("config.sweep.mode='zip' needs axes of equal length, "
                       f"got {lengths}")
    rows = zip(*(values[n] for n in names))
  return [dict(zip(names, row)) for row in rows]


def check_keys(config, names, where, sections=VARYING_SECTIONS):
  """Raises ValueError naming the keys of `names` (dotted) that the config
  lacks, that cannot differ between members, or that its optimizer does not
  read. `where`: the config section named in the message."""
  base = config.to_dict()
  missing = [name for name in names if not _lookup(base, name)[0]
             or name.split(".")[0] == "sweep"]
  if missing:
    raise ValueError(f"{where} names keys the config does not have: "
                     f"{', '.join(missing)}")
  fixed = [name for name in names if not (
      name in VARYING or any(name.startswith(s + ".") for s in sections))]
  if fixed:
    raise ValueError(
        f"{where}: {', '.join(fixed)} cannot differ between "
        "members (they change shapes or the compiled program); members may "
        f"differ in: {', '.join(VARYING)}"
        + "".join(f", {s}.*" for s in sections))
  optimizer = config.optim.name
  unused = [name for name in names if name.startswith("optim.")
            and name.split(".", 1)[1] not in optim.HYPERPARAMS.get(
                optimizer, ())]
  if unused:
    raise ValueError(
        f"{where}: {', '.join(unused)} has no effect with "
        f"config.optim.name={optimizer!r} (its hyperparameters: "
        f"{', '.join(optim.HYPERPARAMS.get(optimizer, ()))})")


def resolved_config(config, values, where="config.sweep.space"):
  """The single-run config of a member with these {dotted key: value}: the
  base config with them set (each converted to the type of the config's
  value), without the `sweep` section, locked."""
  base = config.to_dict()
  del base["sweep"]
  converted = {name: _converted(name, value, _lookup(base, name)[1], where)
               for name, value in values.items()}
  member = ml_collections.ConfigDict(_with_overrides(base, converted))
  member.lock()
  return member


def _with_overrides(config_dict, overrides):
  """A copy of the nested dict `config_dict` with the dotted keys set."""
  tree = _deep_copy(config_dict)
  for name, value in overrides.items():
    node = tree
    *parents, leaf = name.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return tree


def _deep_copy(tree):
  if isinstance(tree, dict):
    return {k: _deep_copy(v) for k, v in tree.items()}
  return tree


def member_configs(config):
  """(overrides, configs): each member's values and its resolved config (the
  base config with them set, without the `sweep` section), locked."""
  overrides = member_overrides(config)
  base = config.to_dict()
  del base["sweep"]
  configs = []
  for values in overrides:
    member = ml_collections.ConfigDict(_with_overrides(base, values))
    member.lock()
    configs.append(member)
  return overrides, configs


def member_config(config, index):
  """Member `index`'s resolved config (see member_configs)."""
  _, configs = member_configs(config)
  if not 0 <= index < len(configs):
    raise ValueError(f"the sweep has members 0..{len(configs) - 1}, not "
                     f"{index}")
  return configs[index]


def config_for_workdir(config, workdir):
  """The config of the run in `workdir`: for a sweep config and a workdir
  `<sweep>/members/<k>`, member k's config; otherwise `config` itself.

  Lets `launch.py --config <sweep config> --mode=evaluate --workdir
  <sweep>/members/<k>` evaluate a member as the single run it is.
  """
  if not is_sweep(config):
    return config
  path = os.path.normpath(os.path.abspath(workdir))
  name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
  if parent == "members" and name.isdigit():
    return member_config(config, int(name))
  raise ValueError(
      f"{workdir!r} is not a sweep member's folder; with a sweep config, "
      "pass --workdir <sweep workdir>/members/<k>")
