"""The stacked state of a sweep's members and the vmapped steps that train it.

How one program trains them all. The members' TrainStates are stacked along
a leading axis [K, ...] (init vmapped over the members' seeds) and one jitted
step maps steps.train_step's two halves, `train_inputs` and `gradient_step`,
over that axis with jax.vmap. What may differ between members
(sweep_config.VARYING) reaches the program as arrays, never as compile-time
constants:
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
changes shapes or the program, so it is shared (the `Program`).

Isolation: a member whose loss or parameters become NaN/Inf is masked out
(its state stays at its last finite value, it is reported as diverged) while
the others continue, computing exactly what they would have alone.

Speed: `sweep.vmap_width` members share one vmap; groups of them follow one
another, unrolled, in the same program. Auto (0) is the whole chunk on
GPU/TPU and 1 on CPU, where XLA runs vmapped per-member convolutions and
matmuls 2-3x slower than unbatched ones (resolve_vmap_width).
"""

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp

from cnn_jax.conv import conv_impls
from cnn_jax.data import augment
from cnn_jax.distributed import mesh as parallel
from cnn_jax.distributed import multihost
from cnn_jax.sweeps import slot_steps
from cnn_jax.tasks import CLASSIFICATION
from cnn_jax.training import optim
from cnn_jax.training import steps
from cnn_jax.training.train_state import TrainState


def check_traced_dropout(model, example_shape):
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
  # keys [K, 2], dummy input [1, ...] -> variables [K, ...]: steps.initialized
  # vmapped over the members' keys (compiled once per chunk size).
  init: Any


def shared_program(config, steps_per_epoch):
  """The Program of a sweep whose members' configs look like `config`."""
  model = steps.create_model(config.model)
  schedule = steps.learning_rate_schedule(config, steps_per_epoch)
  init = jax.jit(jax.vmap(
      lambda key, dummy: model.init({"params": key, "dropout": key}, dummy,
                                    train=False), in_axes=(0, None)),
                 compiler_options=steps.init_compiler_options())
  return Program(model, schedule, optim.make_optimizer(config.optim, schedule),
                 init)


def init_members(configs, example_shape, steps_per_epoch, program=None):
  """Stacked TrainState [K, ...] of the members, and the Program.

  Member k's leaves are those steps.create_train_state builds for
  configs[k] (same values: init vmapped over the members' seeds), with its
  optimizer hyperparameters in opt_state.hyperparams.
  """
  base = configs[0]
  program = program or shared_program(base, steps_per_epoch)
  keys = jnp.stack([jax.random.PRNGKey(c.seed) for c in configs])
  variables = program.init(keys, jnp.zeros((1, *example_shape), jnp.float32))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  opt_state = _stacked_optimizer_init(program.tx)(params)
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


@functools.lru_cache(maxsize=8)
def _stacked_optimizer_init(tx):
  """tx.init vmapped over the members, as one compiled program (cached per
  optimizer: a search calls it at every refill). Run eagerly, its schedule
  and inject_hyperparams ops were each compiled on their own."""
  return jax.jit(jax.vmap(tx.init))


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
  run, no vmap; also for count 1). width <= 0 or >= count > 1: a single
  vmap over all members."""
  if width <= 0 or (width >= count and width > 1):
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

  Member k computes steps.train_step on its own state and batch, with its
  hyperparameters. A member not alive, or whose new loss or parameters are
  not finite, keeps its state and drops out (alive False). `vmap_width`
  members share one vmap (0: all of them; see _map_members). `conv_impl`:
  the convolutions it is traced with (conv_impls.CONV_IMPLS; None: the process
  default; see resolve_conv_impl).
  """
  mixes = any(augment.mixes_labels(a) for a in augment_configs)

  def inputs(state, batch, key, augment_index):

    def branch(augment_config):
      def compute(batch, key):
        images, targets = steps.train_inputs(
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
    # The keys of steps.train_step, from the member's own rng and step.
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images, targets = inputs(state, batch, augment_key,
                             hparams["augment_index"])
    trainee = state
    if vary_dropout:
      trainee = state.replace(apply_fn=model.clone(
          dropout_rate=hparams["dropout_rate"]).apply)
    new, metrics = steps.gradient_step(
        trainee, batch, images, targets, dropout_key,
        label_smoothing=hparams["label_smoothing"])
    new = new.replace(apply_fn=state.apply_fn)  # no tracer leaks out
    updated = alive & jnp.isfinite(metrics["loss"]) & _all_finite(
        (new.params, new.batch_stats))
    new = jax.tree.map(lambda n, o: jnp.where(updated, n, o), new, state)
    return new, updated, {**metrics, "updated": updated}

  mapped = _map_members(member_step, vmap_width, member_count)

  def step(*args):
    with conv_impls.default_conv_impl_scope(conv_impl):
      return mapped(*args)

  return step


def make_eval_step(*, mean, std, member_count, vmap_width=0):
  """(states [K], batch {'image': [B, ...], 'label', 'mask'}) -> summed
  test metrics {'loss_sum', 'correct', 'count'}: [K] each."""

  def member_eval(state, batch):
    sums, _ = steps.eval_step(state, batch, mean=mean, std=std)
    return sums

  def step(states, batch):
    return _map_members(lambda s: member_eval(s, batch), vmap_width,
                        member_count)(states)

  return step


def jit_steps(program, augment_configs, *, mean, std, member_count,
              vary_dropout, vmap_width, conv_impl, mesh, donate=True,
              per_slot=False):
  """(train_step, eval_step) of make_train_step / make_eval_step, jitted on
  `mesh`: stacked states, `alive` and hyperparameters split along
  'members', batches [K, B, ...] along 'members' and 'data' (over every
  device of every process). The per-member metrics [K] come back
  replicated, so every process reads the same values and takes the same
  decisions (divergence, rungs, PBT) without another collective.
  donate: the train step reuses the states' buffers (the sweep; a search
  keeps reading the states it passed, to save kept trials).
  per_slot: where slot_steps.usable (one member per vmap, the CPU default),
  one member's program called for each member (slot_steps.SlotSteps).
  The train step is (states, alive, batch, hparams, active=None): `active`
  (bool [K] on the host, default all) names the members that run; the
  K-member program runs them all (idle members are masked by `alive`).
  """
  on_members = parallel.member_sharding(mesh)
  everywhere = parallel.replicated(mesh)
  eval_step = jax.jit(
      make_eval_step(mean=mean, std=std, member_count=member_count,
                     vmap_width=vmap_width),
      in_shardings=(on_members, parallel.batch_sharding(mesh)),
      out_shardings=everywhere)
  if per_slot and slot_steps.usable(vmap_width, member_count, mesh):
    one, _ = jit_steps(
        program, augment_configs, mean=mean, std=std, member_count=1,
        vary_dropout=vary_dropout, vmap_width=1, conv_impl=conv_impl,
        mesh=mesh)  # (it donates the rows SlotSteps took: its own copies)
    return (slot_steps.SlotSteps(one, member_count, mesh, donate=donate),
            eval_step)
  whole = jax.jit(
      make_train_step(program.model, augment_configs, mean=mean, std=std,
                      member_count=member_count, vary_dropout=vary_dropout,
                      vmap_width=vmap_width, conv_impl=conv_impl),
      in_shardings=(on_members, on_members,
                    parallel.batch_sharding(mesh, stacked=True), on_members),
      out_shardings=(on_members, on_members, everywhere),
      donate_argnums=(0, 1) if donate else ())

  def train_step(states, alive, batch, hparams, active=None):
    del active  # every member runs; `alive` masks the idle ones
    return whole(states, alive, batch, hparams)

  return train_step, eval_step


def evaluate_members(eval_step, states, dataset, batch_size, mesh):
  """Per-member metrics [{'accuracy', 'loss', 'count'}] of stacked `states`
  on every example of `dataset` (eval_step from jit_steps; each process
  reads only the rows of each batch its devices hold)."""
  totals = None
  for batch in steps.global_eval_batches(dataset, batch_size,
                                         parallel.batch_sharding(mesh)):
    sums = eval_step(states, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return [CLASSIFICATION.finalize({k: v[i] for k, v in totals.items()})
          for i in range(len(totals["count"]))]


def local_batch_block(mesh, member_count, batch_size):
  """(members, rows): the slots of a stacked batch [K, B, ...] this
  process provides and the rows of each of their batches it reads (all of
  both with one process; multihost.local_block)."""
  members, rows = multihost.local_block(
      parallel.batch_sharding(mesh, stacked=True), (member_count, batch_size),
      "config.sweep.member_devices")
  return members, rows


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
  None (the process default, as in single runs) or one of conv_impls.CONV_IMPLS.

  'auto' (the default) is 'im2col' where members share a vmap (width > 1) on
  a GPU/TPU, else None. vmap turns per-member kernels into grouped
  convolutions, whose kernel gradient (a batch-grouped convolution) XLA:GPU
  runs far slower than the same work as one batched matrix multiply
  (experiments/bench_sweep.py on an H200, K=8 MNIST CNNs: 0.53M img/s with
  XLA's convolutions, 1.0M with im2col).
  """
  impl = conv_impls.check_conv_impl(sweep_config.get("conv_impl", "auto"),
                                    "config.sweep.conv_impl")
  if impl != "auto":
    return impl
  width = chunk_size if vmap_width <= 0 else min(vmap_width, chunk_size)
  backend = backend or jax.default_backend()
  return "im2col" if width > 1 and backend != "cpu" else None

