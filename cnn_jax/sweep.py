"""Sweeps in one program: K training runs ("members") stacked and vmapped.

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

How one program trains them all. The members' TrainStates are stacked along
a leading axis [K, ...] (init vmapped over the members' seeds) and one jitted
step maps train.train_step's two halves, `train_inputs` and `gradient_step`,
over that axis with jax.vmap. What may differ between members (VARYING)
reaches the program as arrays, never as compile-time constants:
  * seed: the initial parameters, the data order (each member's batch is
    gathered on the host from its own permutation, into [K, B, ...]), and the
    dropout/augmentation keys;
  * optimizer hyperparameters: `opt_state.hyperparams` (optim.py wraps every
    optimizer in optax.inject_hyperparams); the learning rate is the peak of
    the shared schedule shape;
  * model.dropout_rate: a traced rate (models whose dropout takes one, as
    SimpleCNN's does); train.label_smoothing: a traced value in the loss;
  * data.augment.*: each distinct setting is one branch of a lax.switch on a
    per-member index.
Anything else (architecture, batch size, optimizer or schedule kind, epochs)
changes shapes or the program, so it is shared; naming it in the axes is an
error that names it.

Isolation: a member whose loss or parameters become NaN/Inf is masked out
(its state stays at its last finite value, it is reported as diverged) while
the others continue, computing exactly what they would have alone.

Memory: `sweep.chunk` members run at once; more run chunk after chunk with
the same compiled program (the last chunk is padded with masked-out copies).

Speed: `sweep.vmap_width` members share one vmap; groups of them follow one
another, unrolled, in the same program. Auto (0) is the whole chunk on
GPU/TPU and 1 on CPU, where XLA runs vmapped per-member convolutions and
matmuls 2-3x slower than unbatched ones (resolve_vmap_width).

Devices: a ('members', 'data') mesh (cnn_jax/parallel.py). Each batch is
split over 'data' (data parallelism, parameters replicated); with
`sweep.member_devices` > 1 the members are split over 'members' as well.

Outputs in the sweep's workdir:
  members/<k>/   an ordinary run folder per member (summary.json with its
                 resolved config, metrics.jsonl, tensorboard/, checkpoints/):
                 `launch.py --config <sweep config> --mode=evaluate
                 --workdir <sweep>/members/<k>` evaluates it as a single run;
  metrics.jsonl  every member's records, with a 'member' field;
  summary.json, summary.md   the members ranked by test accuracy.
"""

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import checkpoint
from cnn_jax import ops
from cnn_jax import optim
from cnn_jax import parallel
from cnn_jax import train
from cnn_jax import transfer
from cnn_jax import workdirs
from cnn_jax import writers
from cnn_jax.data import augment
from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.tasks import CLASSIFICATION
from cnn_jax.train_state import TrainState

MODES = ("grid", "zip")

# Config keys members may differ in, besides every key of data.augment.
VARYING = ("seed", "optim.learning_rate", "optim.weight_decay",
           "optim.momentum", "optim.b1", "optim.b2", "model.dropout_rate",
           "train.label_smoothing")
VARYING_SECTIONS = ("data.augment",)

# Keys of the sweep section itself.
SWEEP_DEFAULTS = {"axes": None, "mode": "grid", "chunk": 0,
                  "member_devices": 1, "vmap_width": 0,
                  "conv_impl": "auto"}


# --------------------------------------------------------------------------
# Config: the members.


def is_sweep(config):
  """Whether `config` describes a sweep (has a `sweep` section with axes)."""
  return "sweep" in config and bool(_flat_axes(config.sweep.get("axes")))


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


def _may_vary(name):
  return name in VARYING or any(name.startswith(section + ".")
                                for section in VARYING_SECTIONS)


def _converted(name, value, current):
  """`value` with the type of the config's `current` value at `name`."""
  if isinstance(current, bool) or isinstance(value, bool):
    if isinstance(current, bool) and isinstance(value, bool):
      return value
  elif isinstance(current, float) and isinstance(value, (int, float)):
    return float(value)
  elif isinstance(current, int) and isinstance(value, int):
    return value
  raise ValueError(f"config.sweep.axes.{name}: value {value!r} is not of the "
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
  mode = sweep_config.get("mode", "grid")
  if mode not in MODES:
    raise ValueError(f"config.sweep.mode={mode!r} is not one of: "
                     f"{', '.join(MODES)}")
  axes = _flat_axes(sweep_config.get("axes"))
  if not axes:
    raise ValueError("config.sweep.axes is empty: name at least one config "
                     "key and its values, e.g. config.sweep.axes.seed = (0, 1)")
  base = config.to_dict()
  missing = [name for name in axes if not _lookup(base, name)[0]
             or name.split(".")[0] == "sweep"]
  if missing:
    raise ValueError(f"config.sweep.axes names keys the config does not have: "
                     f"{', '.join(missing)}")
  fixed = [name for name in axes if not _may_vary(name)]
  if fixed:
    raise ValueError(
        f"config.sweep.axes: {', '.join(fixed)} cannot differ between "
        "members (they change shapes or the compiled program); members may "
        f"differ in: {', '.join(VARYING)}, "
        f"{', '.join(s + '.*' for s in VARYING_SECTIONS)}")
  optimizer = config.optim.name
  unused = [name for name in axes if name.startswith("optim.")
            and name.split(".", 1)[1] not in optim.HYPERPARAMS.get(
                optimizer, ())]
  if unused:
    raise ValueError(
        f"config.sweep.axes: {', '.join(unused)} has no effect with "
        f"config.optim.name={optimizer!r} (its hyperparameters: "
        f"{', '.join(optim.HYPERPARAMS.get(optimizer, ()))})")
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


# --------------------------------------------------------------------------
# The stacked state and the vmapped steps.


def _check_supported(config):
  if config.get("task", "classification") != "classification":
    raise ValueError(f"config.task={config.task!r}: sweeps train "
                     "classification only")
  transfer_config = config.get("transfer")
  if transfer_config is not None and transfer.is_active(transfer_config):
    raise ValueError("sweeps do not support config.transfer (partial "
                     "restore); run those members as single runs")


def _check_traced_dropout(model, example_shape):
  """A per-member dropout rate needs a model whose dropout takes an array."""
  key = jax.random.PRNGKey(0)
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  try:
    jax.eval_shape(lambda rate: model.clone(dropout_rate=rate).init(
        {"params": key, "dropout": key}, dummy, train=True),
                   jnp.float32(0.5))
  except (jax.errors.TracerBoolConversionError,
          jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        f"config.sweep.axes.model.dropout_rate: model {type(model).__name__} "
        "takes its dropout rate as a Python float only (flax's nn.Dropout); "
        "use a model whose dropout takes an array (SimpleCNN's does)") from e


@dataclasses.dataclass(frozen=True)
class Program:
  """What every member (and chunk) of a sweep shares: the model, the
  learning-rate schedule (member k's rate at step s is its
  optim.learning_rate * schedule.shape(s)) and the optimizer. Reusing one
  Program keeps the stacked states' static parts equal, so later chunks run
  the program compiled for the first."""

  model: Any
  schedule: optim.ScaledSchedule
  tx: Any
  # keys [K, 2], dummy input [1, ...] -> variables [K, ...]: train.initialized
  # vmapped over the members' keys (compiled once per chunk size).
  init: Any


def shared_program(config, steps_per_epoch):
  """The Program of a sweep whose members' configs look like `config`."""
  model = train.create_model(config.model)
  schedule = train.learning_rate_schedule(config, steps_per_epoch)
  init = jax.jit(jax.vmap(
      lambda key, dummy: model.init({"params": key, "dropout": key}, dummy,
                                    train=False), in_axes=(0, None)))
  return Program(model, schedule, optim.make_optimizer(config.optim, schedule),
                 init)


def init_members(configs, example_shape, steps_per_epoch, program=None):
  """Stacked TrainState [K, ...] of the members, and the Program.

  Member k's leaves are those train.create_train_state builds for
  configs[k] (same values: init vmapped over the members' seeds), with its
  optimizer hyperparameters in opt_state.hyperparams.
  """
  base = configs[0]
  program = program or shared_program(base, steps_per_epoch)
  keys = jnp.stack([jax.random.PRNGKey(c.seed) for c in configs])
  variables = program.init(keys, jnp.zeros((1, *example_shape), jnp.float32))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  opt_state = jax.vmap(program.tx.init)(params)
  hyperparams = dict(opt_state.hyperparams)
  for name in optim.HYPERPARAMS[base.optim.name]:
    hyperparams[name] = jnp.asarray([c.optim[name] for c in configs],
                                    hyperparams[name].dtype)
  opt_state = opt_state._replace(hyperparams=hyperparams)
  states = TrainState(
      step=jnp.zeros((len(configs),), jnp.int32), params=params,
      batch_stats=batch_stats, opt_state=opt_state,
      rng=jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys),
      apply_fn=program.model.apply, tx=program.tx)
  return states, program


def member_state(states, index):
  """Member `index` of stacked states: an ordinary single-run TrainState."""
  return jax.tree.map(lambda x: x[index], states)


def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _map_members(fn, width, count):
  """fn mapped over the leading (member) axis of its arguments, in one
  program: `width` members at a time go through one jax.vmap, and the groups
  follow one another unrolled (width 1: each member's step as in its single
  run, no vmap). width <= 0 or >= count: a single vmap over all members."""
  if width <= 0 or width >= count:
    return jax.vmap(fn)

  def unrolled(*args):
    outputs = []
    for start in range(0, count, width):
      group = jax.tree.map(lambda a, s=start: a[s:s + width], args)
      if width == 1:
        single = fn(*jax.tree.map(lambda a: a[0], group))
        outputs.append(jax.tree.map(lambda a: a[None], single))
      else:
        outputs.append(jax.vmap(fn)(*group))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)

  return unrolled


def hyperparameter_arrays(configs, augment_configs):
  """The per-member values the step reads outside the optimizer state:
  {'label_smoothing': f32 [K], 'augment_index': i32 [K] (into
  augment_configs), 'dropout_rate': f32 [K]}."""
  settings = [json.dumps(c.data.augment.to_dict(), sort_keys=True)
              for c in configs]
  distinct = [json.dumps(a, sort_keys=True) for a in augment_configs]
  return {
      "label_smoothing": jnp.asarray(
          [c.train.label_smoothing for c in configs], jnp.float32),
      "augment_index": jnp.asarray([distinct.index(s) for s in settings],
                                   jnp.int32),
      "dropout_rate": jnp.asarray([c.model.dropout_rate for c in configs],
                                  jnp.float32),
  }


def distinct_augmentations(configs):
  """The members' distinct data.augment settings (dicts), in first-seen
  order: one lax.switch branch each."""
  seen = {}
  for c in configs:
    setting = c.data.augment.to_dict()
    seen.setdefault(json.dumps(setting, sort_keys=True), setting)
  return list(seen.values())


def make_train_step(model, augment_configs, *, mean, std, member_count,
                    vary_dropout=False, vmap_width=0, conv_impl=None):
  """The sweep's training step (to jit):

    (states [K], alive bool [K], batch {'image': [K, B, ...], 'label':
    [K, B]}, hparams from hyperparameter_arrays)
      -> (states, alive, {'loss', 'accuracy', 'updated'}: [K] each)

  Member k computes train.train_step on its own state and batch, with its
  hyperparameters. A member not alive, or whose new loss or parameters are
  not finite, keeps its state and drops out (alive False). `vmap_width`
  members share one vmap (0: all of them; see _map_members). `conv_impl`:
  the convolutions it is traced with (ops.CONV_IMPLS; None: the process
  default; see resolve_conv_impl).
  """
  mixes = any(augment.mixes_labels(a) for a in augment_configs)

  def inputs(state, batch, key, augment_index):

    def branch(augment_config):
      def compute(batch, key):
        images, targets = train.train_inputs(
            state, batch, key, mean=mean, std=std,
            augment_config=augment_config)
        if mixes and targets is None:  # one-hot: the same loss, bitwise
          logits = jax.eval_shape(lambda x: state.apply_fn(
              {"params": state.params, "batch_stats": state.batch_stats}, x,
              train=False), images)
          targets = jax.nn.one_hot(batch["label"], logits.shape[-1])
        return images, targets
      return compute

    branches = [branch(a) for a in augment_configs]
    if len(branches) == 1:
      return branches[0](batch, key)
    return jax.lax.switch(augment_index, branches, batch, key)

  def member_step(state, alive, batch, hparams):
    # The keys of train.train_step, from the member's own rng and step.
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images, targets = inputs(state, batch, augment_key,
                             hparams["augment_index"])
    trainee = state
    if vary_dropout:
      trainee = state.replace(apply_fn=model.clone(
          dropout_rate=hparams["dropout_rate"]).apply)
    new, metrics = train.gradient_step(
        trainee, batch, images, targets, dropout_key,
        label_smoothing=hparams["label_smoothing"])
    new = new.replace(apply_fn=state.apply_fn)  # no tracer leaks out
    updated = alive & jnp.isfinite(metrics["loss"]) & _all_finite(
        (new.params, new.batch_stats))
    new = jax.tree.map(lambda n, o: jnp.where(updated, n, o), new, state)
    return new, updated, {**metrics, "updated": updated}

  mapped = _map_members(member_step, vmap_width, member_count)

  def step(*args):
    with ops.default_conv_impl_scope(conv_impl):
      return mapped(*args)

  return step


def make_eval_step(*, mean, std, member_count, vmap_width=0):
  """(states [K], batch {'image': [B, ...], 'label', 'mask'}) -> summed
  test metrics {'loss_sum', 'correct', 'count'}: [K] each."""

  def member_eval(state, batch):
    sums, _ = train.eval_step(state, batch, mean=mean, std=std)
    return sums

  def step(states, batch):
    return _map_members(lambda s: member_eval(s, batch), vmap_width,
                        member_count)(states)

  return step


# --------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class _Member:
  """Host-side record of one member during the run."""

  index: int
  overrides: dict
  config: ml_collections.ConfigDict
  workdir: str
  writer: writers.MetricWriter = None
  alive: bool = True
  diverged_at: int = None  # the step whose loss/params were not finite
  train_loss: float = None
  test_metrics: dict = None


def _member_batches(train_set, batch_size, seeds):
  """Yields (position, {'image': [K, B, ...], 'label': [K, B]}): member k's
  batch from its own seed's order (one host iterator per distinct seed)."""
  distinct = sorted(set(seeds))
  iterators = [batching.train_batches(train_set, batch_size, s)
               for s in distinct]
  rows = [distinct.index(s) for s in seeds]
  for items in zip(*iterators):
    position = items[0][0]
    batches = [b for _, b in items]
    yield position, {key: np.stack([batches[r][key] for r in rows])
                     for key in batches[0]}


def _prepare(workdir):
  existing = [f for f in ("summary.json", "metrics.jsonl", "members",
                          "checkpoints")
              if os.path.exists(os.path.join(workdir, f))]
  if existing:
    raise workdirs.WorkdirInUseError(
        f"workdir {workdir!r} already holds results ({', '.join(existing)}); "
        "choose a new --workdir (results are never overwritten; a sweep is "
        "not resumed)")
  os.makedirs(workdir, exist_ok=True)


def _chunks(count, size):
  return [list(range(start, min(start + size, count)))
          for start in range(0, count, size)]


def resolve_vmap_width(sweep_config, chunk_size, backend=None):
  """Members per vmap in a chunk's program (config.sweep.vmap_width; 0:
  auto). Auto is the whole chunk on GPU/TPU; on CPU it is 1 (members
  unrolled in the one program), because XLA:CPU runs the batched
  convolutions and matmuls that vmap makes of per-member weights 2-3x slower
  than the same work unbatched (experiments/bench_sweep.py). Members split
  over devices (sweep.member_devices > 1) always share one vmap."""
  width = sweep_config.get("vmap_width", 0)
  if width < 0:
    raise ValueError(f"config.sweep.vmap_width={width} must be >= 0 (0: auto)")
  if sweep_config.get("member_devices", 1) > 1:
    return chunk_size
  if width == 0:
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" else chunk_size
  return min(width, chunk_size)


def resolve_conv_impl(sweep_config, vmap_width, chunk_size, backend=None):
  """The convolutions of the sweep's train step (config.sweep.conv_impl):
  None (the process default, as in single runs) or one of ops.CONV_IMPLS.

  'auto' (the default) is 'im2col' where members share a vmap (width > 1) on
  a GPU/TPU, else None. vmap turns per-member kernels into grouped
  convolutions, whose kernel gradient (a batch-grouped convolution) XLA:GPU
  runs far slower than the same work as one batched matrix multiply
  (experiments/bench_sweep.py on an H200, K=8 MNIST CNNs: 0.53M img/s with
  XLA's convolutions, 1.0M with im2col).
  """
  impl = sweep_config.get("conv_impl", "auto")
  if impl not in ops.CONV_IMPLS:
    raise ValueError(f"config.sweep.conv_impl={impl!r} is not one of: "
                     f"{', '.join(ops.CONV_IMPLS)}")
  if impl != "auto":
    return impl
  width = chunk_size if vmap_width <= 0 else min(vmap_width, chunk_size)
  backend = backend or jax.default_backend()
  return "im2col" if width > 1 and backend != "cpu" else None


class _SweepWriter:
  """The sweep's metrics.jsonl (all members, with a 'member' field) and each
  member's own metrics.jsonl / TensorBoard folder."""

  def __init__(self, workdir):
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a",
                      encoding="utf-8")

  def write(self, member, step, split, metrics):
    member.writer.write(step, split, metrics)
    record = {"step": int(step), "split": split, "member": member.index}
    record.update({k: writers._plain(v) for k, v in metrics.items()})  # pylint: disable=protected-access
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self):
    self._file.close()


def _evaluate(p_eval_step, states, test_set, batch_size, sharding):
  totals = None
  for batch in batching.eval_batches(test_set, batch_size):
    sums = p_eval_step(states, jax.device_put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = len(totals["count"])
  return [CLASSIFICATION.finalize({k: v[i] for k, v in totals.items()})
          for i in range(count)]


def _log_window(members, records, first_step, schedule, sweep_writer, epoch,
                throughput):
  """Writes each live member's mean train metrics over the window and marks
  the members that diverged in it."""
  updated = np.stack([r["updated"] for r in records])  # [T, K]
  for slot, member in enumerate(members):
    if member is None or not member.alive:
      continue
    good = updated[:, slot]
    if not good.all():
      t = int(np.argmin(good))
      member.alive = False
      member.diverged_at = first_step + t + 1
      loss = float(records[t]["loss"][slot])
      writers.report(f"member {member.index} diverged at step "
                     f"{member.diverged_at} (loss {loss}); its state is kept "
                     "from the step before, the others continue")
      sweep_writer.write(member, member.diverged_at, "diverged",
                         {"loss": loss})
    if not good.any():
      continue
    step = first_step + int(np.nonzero(good)[0][-1]) + 1
    summary = {k: float(np.mean([r[k][slot] for r, g in zip(records, good)
                                 if g]))
               for k in ("loss", "accuracy")}
    member.train_loss = summary["loss"]
    summary.update(
        learning_rate=float(member.config.optim.learning_rate
                            * schedule.shape(step - 1)),
        img_per_s=throughput, epoch=epoch)
    sweep_writer.write(member, step, "train", summary)


def _save_member(member, state, mean, std, per_epoch, test_metrics):
  step = int(state.step)
  position = batching.IteratorPosition(step // per_epoch, step % per_epoch)
  checkpoint_config = member.config.get("checkpoint")
  if checkpoint_config is None:
    checkpoint_config = ml_collections.ConfigDict(
        {"every_steps": 0, "every_seconds": 0.0, "keep": 1,
         "keep_best_metric": "", "async_save": False})
  manager = checkpoint.make_manager(member.workdir, checkpoint_config)
  meta = {"step": step, "position": dataclasses.asdict(position),
          "pending_metrics": [], "test_metrics": test_metrics,
          "config": member.config.to_dict(),
          "normalization": {"mean": mean.tolist(), "std": std.tolist()}}
  checkpoint.save(manager, state, meta)
  manager.wait_until_finished()
  manager.close()
  return step


def _member_summary(member, sweep_workdir, steps, start_time, throughput,
                    chunk_members, mean, std):
  status = "finished" if member.alive else "diverged"
  summary = {
      "status": status,
      "test_accuracy": member.test_metrics["accuracy"],
      "test_loss": member.test_metrics["loss"],
      "test_examples": member.test_metrics["count"],
      "task": "classification",
      "test_metrics": member.test_metrics,
      "steps": steps,
      "epochs": member.config.train.num_epochs,
      "wall_seconds": time.time() - start_time,
      # The member's share of its chunk's images/s (compilation excluded).
      "train_img_per_s": throughput / chunk_members if throughput else None,
      "normalization": {"mean": mean.tolist(), "std": std.tolist()},
      "device": jax.devices()[0].device_kind,
      "config": member.config.to_dict(),
      "sweep": {"workdir": os.path.abspath(sweep_workdir),
                "member": member.index, "overrides": member.overrides,
                "diverged_at_step": member.diverged_at,
                "chunk_train_img_per_s": throughput},
  }
  if not member.alive:
    summary["step"] = steps
    summary["error"] = (f"non-finite loss or parameters at step "
                        f"{member.diverged_at}; state kept from step {steps}")
  workdirs.write_summary(member.workdir, summary)
  return summary


def _compiled_steps(cache, program, augment_configs, vary_dropout, mean, std,
                    chunk_size, width, mesh, conv_impl=None):
  """The jitted (train_step, eval_step) for these static settings, compiled
  once and reused by every chunk that shares them."""
  key = (json.dumps(augment_configs, sort_keys=True), vary_dropout)
  if key not in cache:
    on_members = parallel.member_sharding(mesh)
    cache[key] = (
        jax.jit(make_train_step(program.model, augment_configs, mean=mean,
                                std=std, member_count=chunk_size,
                                vary_dropout=vary_dropout, vmap_width=width,
                                conv_impl=conv_impl),
                in_shardings=(on_members, on_members,
                              parallel.batch_sharding(mesh, stacked=True),
                              on_members),
                out_shardings=(on_members, on_members, on_members),
                donate_argnums=(0, 1)),
        jax.jit(make_eval_step(mean=mean, std=std, member_count=chunk_size,
                               vmap_width=width),
                in_shardings=(on_members, parallel.batch_sharding(mesh)),
                out_shardings=on_members))
  return cache[key]


def _train_chunk(indices, overrides, configs, data, run):
  """Trains members `indices` together (one chunk); returns their _Member
  records and the chunk's training throughput (images/s, all members)."""
  train_set, test_set, mean, std = data
  chunk_size, mesh, program = run["chunk_size"], run["mesh"], run["program"]
  base = configs[indices[0]]
  # Padding: copies of the last member, masked out from the start.
  slots = indices + [indices[-1]] * (chunk_size - len(indices))
  chunk_configs = [configs[i] for i in slots]
  members = []
  for index in indices:
    member_dir = os.path.join(run["workdir"], "members", str(index))
    os.makedirs(member_dir)
    members.append(_Member(index, overrides[index], configs[index],
                           member_dir, writers.MetricWriter(member_dir)))
  members += [None] * (chunk_size - len(indices))

  batch_size = base.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = base.train.num_epochs * per_epoch
  states, _ = init_members(chunk_configs, train_set.example_shape, per_epoch,
                           program)
  augment_configs = distinct_augmentations(chunk_configs)
  p_train_step, p_eval_step = _compiled_steps(
      run["compiled"], program, augment_configs, run["vary_dropout"], mean,
      std, chunk_size, run["vmap_width"], mesh, run["conv_impl"])
  on_members = parallel.member_sharding(mesh)
  states, alive, hparams = jax.device_put(
      (states, jnp.asarray([m is not None for m in members]),
       hyperparameter_arrays(chunk_configs, augment_configs)), on_members)

  def evaluate_members(step, epoch, log):
    results = _evaluate(p_eval_step, states, test_set,
                        base.data.eval_batch_size,
                        parallel.batch_sharding(mesh))
    for member, metrics in zip(members, results):
      if member is not None:
        member.test_metrics = metrics
        if log and member.alive:
          run["writer"].write(member, step, "test",
                              {**metrics, "epoch": epoch})

  pending, step, evaluated_at = [], 0, None
  window_start, window_images = time.time(), 0
  train_seconds, train_images, first_window = 0.0, 0, True
  batches = prefetch.prefetch_to_device(
      _member_batches(train_set, batch_size, [c.seed for c in chunk_configs]),
      size=2, sharding=parallel.batch_sharding(mesh, stacked=True))
  try:
    for position, batch in batches:
      if step >= total_steps:
        break
      states, alive, step_metrics = p_train_step(states, alive, batch,
                                                 hparams)
      pending.append(step_metrics)
      step += 1
      window_images += batch_size * len(indices)
      epoch_done = position.batch == 0
      if step % base.train.log_every_steps == 0 or epoch_done:
        records = jax.device_get(pending)
        elapsed = time.time() - window_start
        throughput = window_images / max(elapsed, 1e-9)
        if not first_window:  # the first window holds the compilation
          train_seconds += elapsed
          train_images += window_images
        _log_window(members, records, step - len(records), program.schedule,
                    run["writer"], step / per_epoch,
                    throughput / len(indices))  # each member's share
        run["bar"].update(len(records))
        pending, first_window = [], False
        live = [m for m in members if m is not None and m.alive]
        if not live:
          writers.report(f"every member of chunk {indices} diverged; "
                         "stopping the chunk")
          break
        run["bar"].set_postfix(
            epoch=f"{step / per_epoch:.2f}",
            best_loss=f"{min(m.train_loss for m in live):.4f}",
            img_s=f"{throughput:.0f}")
        window_start, window_images = time.time(), 0
      if epoch_done and (position.epoch % base.train.eval_every_epochs == 0
                         or step == total_steps):
        evaluate_members(step, position.epoch, log=True)
        evaluated_at = step
        best = max((m for m in members if m is not None and m.alive),
                   key=lambda m: m.test_metrics["accuracy"])
        writers.report(
            f"members {indices[0]}-{indices[-1]}, epoch {position.epoch} "
            f"step {step}: best test accuracy "
            f"{best.test_metrics['accuracy']:.4f} (member {best.index})")
        window_start = time.time()  # evaluation time is not training time
  finally:
    batches.close()
  if evaluated_at != step:  # stopped early: the members' final states
    evaluate_members(step, step // per_epoch, log=False)

  throughput = train_images / train_seconds if train_seconds else None
  for slot, member in enumerate(members):
    if member is not None:
      steps = _save_member(member, member_state(states, slot), mean, std,
                           per_epoch, member.test_metrics)
      _member_summary(member, run["workdir"], steps, run["start_time"],
                      throughput, len(indices), mean, std)
      member.writer.close()
  return [m for m in members if m is not None], throughput


def _ranked(members):
  """Finished members by test accuracy (best first), then diverged ones."""
  return sorted(members, key=lambda m: (not m.alive,
                                        -m.test_metrics["accuracy"]))


def _fmt(value):
  return f"{value:g}" if isinstance(value, float) else str(value)


def summary_markdown(rows, names):
  """The ranking as a markdown table."""
  header = (["rank", "member"] + names
            + ["test accuracy", "test loss", "train loss", "status"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for row in rows:
    cells = ([str(row["rank"]), str(row["member"])]
             + [_fmt(row["overrides"][n]) for n in names]
             + [f"{row['test_accuracy']:.4f}", f"{row['test_loss']:.4f}",
                "-" if row["train_loss"] is None
                else f"{row['train_loss']:.4f}", row["status"]])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains every member of the sweep `config` into `workdir` (see the
  module docstring for the layout). Returns the sweep's summary dict.

  Raises FloatingPointError (after writing every result) if all members
  diverged.
  """
  start_time = time.time()
  overrides, configs = member_configs(config)
  base = configs[0]
  _check_supported(base)
  sweep_config = config.sweep
  if sweep_config.get("chunk", 0) < 0:
    raise ValueError(f"config.sweep.chunk={sweep_config.chunk} must be >= 0 "
                     "(0: all members at once)")
  chunk_size = min(sweep_config.get("chunk", 0) or len(configs), len(configs))
  mesh = parallel.make_mesh(sweep_config.get("member_devices", 1))
  parallel.check_divisible(mesh, base.data.batch_size, chunk_size)
  parallel.check_divisible(mesh, base.data.eval_batch_size,
                           batch_key="config.data.eval_batch_size")
  _prepare(workdir)
  splits = load_splits(base.data)
  train_set, test_set = splits["train"], splits["test"]
  mean, std = train.normalization_stats(base.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), base.data.batch_size)
  program = shared_program(base, per_epoch)
  vary_dropout = len({c.model.dropout_rate for c in configs}) > 1
  if vary_dropout:
    _check_traced_dropout(program.model, train_set.example_shape)
  chunks = _chunks(len(configs), chunk_size)
  names = sorted(overrides[0])
  writers.report(
      f"sweep of {len(configs)} members over {', '.join(names)} "
      f"({sweep_config.get('mode', 'grid')}), {chunk_size} at a time on "
      f"{mesh.devices.size} device(s) (mesh {dict(mesh.shape)}); "
      f"{base.data.name}: {len(train_set)} train, {len(test_set)} test")

  run = {"workdir": workdir, "start_time": start_time, "mesh": mesh,
         "chunk_size": chunk_size, "program": program,
         "vary_dropout": vary_dropout, "compiled": {},
         "vmap_width": resolve_vmap_width(sweep_config, chunk_size),
         "conv_impl": resolve_conv_impl(
             sweep_config, resolve_vmap_width(sweep_config, chunk_size),
             chunk_size),
         "writer": _SweepWriter(workdir),
         "bar": writers.progress_bar(
             base.train.num_epochs * per_epoch * len(chunks))}
  members, throughputs = [], []
  try:
    for indices in chunks:
      done, throughput = _train_chunk(indices, overrides, configs,
                                      (train_set, test_set, mean, std), run)
      members += done
      if throughput:
        throughputs.append(throughput)
  finally:
    run["bar"].close()
    run["writer"].close()

  rows = []
  for rank, member in enumerate(_ranked(members), 1):
    rows.append({"rank": rank, "member": member.index,
                 "overrides": member.overrides,
                 "test_accuracy": member.test_metrics["accuracy"],
                 "test_loss": member.test_metrics["loss"],
                 "train_loss": member.train_loss,
                 "status": "finished" if member.alive else "diverged",
                 "diverged_at_step": member.diverged_at,
                 "workdir": os.path.join("members", str(member.index))})
  table = summary_markdown(rows, names)
  with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(f"# Sweep: {len(configs)} members over {', '.join(names)}\n\n"
            + table)
  all_diverged = all(r["status"] == "diverged" for r in rows)
  summary = {
      "status": "diverged" if all_diverged else "finished",
      "kind": "sweep",
      "members": len(configs),
      "axes": names,
      "mode": sweep_config.get("mode", "grid"),
      "chunk": chunk_size,
      "ranking": rows,
      "best_member": rows[0]["member"],
      "test_accuracy": rows[0]["test_accuracy"],
      "test_loss": rows[0]["test_loss"],
      "diverged": [r["member"] for r in rows if r["status"] == "diverged"],
      "steps": base.train.num_epochs * per_epoch,
      "epochs": base.train.num_epochs,
      "wall_seconds": time.time() - start_time,
      # All members' training images per second (compilation excluded).
      "train_img_per_s": float(np.mean(throughputs)) if throughputs else None,
      "mesh": dict(mesh.shape),
      "device": jax.devices()[0].device_kind,
      "config": config.to_dict(),
  }
  workdirs.write_summary(workdir, summary)
  writers.report(table)
  if all_diverged:
    raise FloatingPointError(
        "every member of the sweep diverged (non-finite loss or parameters); "
        "lower config.optim.learning_rate or add config.optim.grad_clip_norm")
  return summary
