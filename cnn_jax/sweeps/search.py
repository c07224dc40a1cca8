"""Hyperparameter search in one compiled program: random search, successive
halving (ASHA) and population-based training (PBT).

config.sweep.search picks the kind (configs/mnist_search.py):
  * 'random': config.sweep.trials configurations sampled from
    config.sweep.space (search_space.py), `slots` at a time; a finished
    trial's slot is refilled with the next sample;
  * 'halving': the same, but a trial reaching a rung (config.sweep.halving.
    rungs, epochs) continues only if it is among the top 1/eta of the
    validation scores recorded at that rung (search_trials.Halving); a
    stopped trial's slot is re-initialised in place with a new sample, so
    the program stays full;
  * 'pbt': `slots` members train to the end; every pbt.every_steps the
    bottom pbt.quantile copies the state of a top-quantile member (a gather
    along the member axis) and multiplies its hyperparameters by one of
    pbt.factors, clipped to the space's bounds.

The K slots are rows of sweep_steps' stacked state and run the sweep's
vmapped step, compiled once for K. Each slot has its own step counter
(TrainState.step, and the optimizer's count that drives its schedule), its
own data iterator (its trial's seed, from epoch 0) and its own
hyperparameters (arrays fed to the step). Refills happen at epoch ends, so
every slot's epochs end on the same steps.

Selection reads only the validation split (config.data.val_fraction holds
one out of train when the data has none); the test split is evaluated once,
after the search, for the trials whose final states are kept (the best
`sweep.keep` finished ones; every member for PBT). Outputs: search_outputs.py.
Not resumable: a killed search is restarted in a new workdir.
"""

import functools
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.runs import writers
from cnn_jax.sweeps import parallel
from cnn_jax.sweeps import search_outputs
from cnn_jax.sweeps import search_space
from cnn_jax.sweeps import search_steps
from cnn_jax.sweeps import search_trials
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.tasks import CLASSIFICATION
from cnn_jax.training import optim
from cnn_jax.training import steps

SEARCHES = ("random", "halving", "pbt")
HALVING_DEFAULTS = {"rungs": (1,), "eta": 2}
PBT_DEFAULTS = {"every_steps": 100, "quantile": 0.25, "factors": (0.8, 1.2)}


def is_search(config):
  return "sweep" in config and sweep_config.search_kind(config) in SEARCHES


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
  if trials < slots and kind != "pbt":
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


def evaluate_split(split, p_eval_step, states, dataset, batch_size, sharding):
  """Per-member metrics [{'accuracy', 'loss', 'count'}] of stacked `states`
  on `dataset` (every search evaluation goes through here: tests watch the
  `split` names)."""
  del split
  totals = None
  for batch in batching.eval_batches(dataset, batch_size):
    sums = p_eval_step(states, jax.device_put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return [CLASSIFICATION.finalize({k: v[i] for k, v in totals.items()})
          for i in range(len(totals["count"]))]


class _Slots:
  """The K slots on the host: each one's trial, config, and data iterator."""

  def __init__(self, config, found, train_set, batch_size):
    self.config, self.found = config, found
    self.train_set, self.batch_size = train_set, batch_size
    self.trials, self.next_id = [], 0
    self.current = [None] * found["slots"]  # Trial per slot (None: idle)
    self.configs = [None] * found["slots"]
    self.iterators = [None] * found["slots"]

  def start(self, slot, values=None, parent=None, step=0):
    """A new trial in `slot` (sampled unless `values` are given)."""
    trial_id = self.next_id
    self.next_id += 1
    if values is None:
      values = search_space.sample(self.found["space"], self.found["seed"],
                                   trial_id)
    cfg = sweep_config.resolved_config(self.config, values)
    trial = search_trials.Trial(trial_id, values, slot, start_step=step,
                                parent=parent)
    if parent is not None:
      trial.trajectory = list(self.trials[parent].trajectory)
    trial.trajectory.append((step, {k: v for k, v in values.items()
                                    if k != "seed"}))
    self.trials.append(trial)
    self.current[slot], self.configs[slot] = trial, cfg
    if parent is None:
      self.iterators[slot] = batching.train_batches(
          self.train_set, self.batch_size, cfg.seed)
    return trial

  def stop(self, slot, status, step):
    trial = self.current[slot]
    trial.status, trial.stop_step = status, step
    self.current[slot] = None
    return trial

  def batch(self):
    """{'image': [K, B, ...], 'label': [K, B]}: each active slot's next
    batch; an idle slot repeats the first active one's (masked out)."""
    batches = [None if it is None or t is None else next(it)[1]
               for it, t in zip(self.iterators, self.current)]
    first = next(b for b in batches if b is not None)
    batches = [first if b is None else b for b in batches]
    return {k: np.stack([b[k] for b in batches]) for k in first}


def _compile(program, augment_configs, vary_dropout, mean, std, slots, width,
             mesh, conv_impl):
  on_members = parallel.member_sharding(mesh)
  train_step = jax.jit(
      sweep_steps.make_train_step(
          program.model, augment_configs, mean=mean, std=std,
          member_count=slots, vary_dropout=vary_dropout, vmap_width=width,
          conv_impl=conv_impl),
      in_shardings=(on_members, on_members,
                    parallel.batch_sharding(mesh, stacked=True), on_members),
      out_shardings=(on_members, on_members, on_members))
  eval_step = jax.jit(sweep_steps.make_eval_step(
      mean=mean, std=std, member_count=slots, vmap_width=width),
                      in_shardings=(on_members, parallel.batch_sharding(mesh)),
                      out_shardings=on_members)
  return train_step, eval_step


def _check_base(base, splits):
  optim.check_schedule(base.optim, base.train.num_epochs)
  if base.get("task", "classification") != "classification":
    raise ValueError(f"config.task={base.task!r}: searches train "
                     "classification only")
  if "val" not in splits:
    raise ValueError(
        f"{base.data.name} has no validation split: set "
        "config.data.val_fraction (e.g. 0.1) so the search selects on data "
        "held out of train, never on the test split")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Runs the search `config` into `workdir`; returns its summary dict."""
  start_time = time.time()
  found = settings(config)
  kind, metric, slots_count = found["kind"], found["metric"], found["slots"]
  probe = sweep_config.resolved_config(
      config, search_space.sample(found["space"], found["seed"], 0))
  search_outputs.prepare(workdir)
  splits = load_splits(probe.data)
  _check_base(probe, splits)
  train_set, val_set, test_set = splits["train"], splits["val"], splits["test"]
  mean, std = steps.normalization_stats(probe.data, train_set)
  batch_size = probe.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = probe.train.num_epochs * per_epoch
  mesh = parallel.make_mesh(config.sweep.get("member_devices", 1))
  parallel.check_divisible(mesh, batch_size, slots_count)
  program = sweep_steps.shared_program(probe, per_epoch)
  vary_dropout = "model.dropout_rate" in found["space"]
  if vary_dropout:
    sweep_steps.check_traced_dropout(program.model, train_set.example_shape)
  augment_configs = [probe.data.augment.to_dict()]
  width = sweep_steps.resolve_vmap_width(config.sweep, slots_count)
  p_train, p_eval = _compile(
      program, augment_configs, vary_dropout, mean, std, slots_count, width,
      mesh, sweep_steps.resolve_conv_impl(config.sweep, width, slots_count))
  on_members = parallel.member_sharding(mesh)
  evaluate = functools.partial(
      evaluate_split, p_eval_step=p_eval, batch_size=probe.data.eval_batch_size,
      sharding=parallel.batch_sharding(mesh))
  writers.report(
      f"{kind} search over {', '.join(found['space'])}: {found['trials']} "
      f"trials, {slots_count} at a time; {probe.data.name}: {len(train_set)} "
      f"train, {len(val_set)} val (selection), {len(test_set)} test (once, "
      "at the end)")

  host = _Slots(config, found, train_set, batch_size)
  for slot in range(slots_count):
    host.start(slot)

  def fresh_states():
    cfgs = [c or probe for c in host.configs]
    states, _ = sweep_steps.init_members(cfgs, train_set.example_shape,
                                         per_epoch, program)
    hparams = sweep_steps.hyperparameter_arrays(cfgs, augment_configs)
    return jax.device_put((states, hparams), on_members)

  states, hparams = fresh_states()
  halving = (search_trials.Halving(found["halving"]["rungs"],
                                   found["halving"]["eta"])
             if kind == "halving" else None)
  rng = np.random.default_rng([found["seed"], 1])  # PBT's choices
  kept = {}  # trial id -> host copy of its final state (best `keep`)
  slot_steps = np.zeros(slots_count, np.int64)
  member_steps, step = 0, 0
  bar = writers.progress_bar(None)
  try:
    while any(t is not None for t in host.current):
      active = np.asarray([t is not None for t in host.current])
      states, updated, _ = p_train(
          states, jax.device_put(jnp.asarray(active), on_members),
          host.batch(), hparams)
      step += 1
      slot_steps += active
      member_steps += int(active.sum())
      bar.update(1)
      updated = np.asarray(jax.device_get(updated))
      for slot in np.nonzero(active & ~updated)[0]:
        trial = host.stop(int(slot), "diverged", int(slot_steps[slot]))
        writers.report(f"trial {trial.id} (slot {slot}) diverged at step "
                       f"{trial.stop_step}")
      epoch_end = step % per_epoch == 0
      pbt_due = kind == "pbt" and step % found["pbt"]["every_steps"] == 0
      if not (epoch_end or pbt_due):
        if not any(t is not None for t in host.current):
          break
        continue
      results = evaluate("val", states=states, dataset=val_set)
      for slot, trial in enumerate(host.current):
        if trial is not None:
          trial.val.append((int(slot_steps[slot]), results[slot]))
      if kind == "pbt":
        if pbt_due and step < total_steps:
          states, hparams = _exploit(host, states, hparams, found, rng,
                                     slot_steps, metric)
      if not epoch_end:
        continue
      refill = _epoch_end(host, halving, kind, metric, slot_steps, per_epoch,
                          total_steps, states, kept, found["keep"])
      mask = np.zeros(slots_count, bool)
      for slot in refill:
        if host.next_id < found["trials"]:
          host.start(slot)
          slot_steps[slot] = 0
          mask[slot] = True
      if mask.any():  # the new trials' states, in place
        fresh, hparams = fresh_states()
        states = search_steps.replace_slots(
            jax.device_put(jnp.asarray(mask), on_members), fresh, states)
  finally:
    bar.close()

  if kind == "pbt":  # every member trained to the end: all kept
    for trial in host.trials:
      if trial.status == "finished" and trial.id not in kept:
        kept[trial.id] = jax.device_get(
            sweep_steps.member_state(states, trial.slot))
  # The one look at the test split: the kept trials' final states.
  finished = [t for t in host.trials if t.id in kept]
  for start in range(0, len(finished), slots_count):
    group = finished[start:start + slots_count]
    rows = [kept[t.id] for t in group]
    rows += [rows[0]] * (slots_count - len(rows))  # padding, ignored
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    results = evaluate("test", states=jax.device_put(stacked, on_members),
                       dataset=test_set)
    for trial, metrics in zip(group, results):
      trial.test = metrics
  return search_outputs.write(
      workdir, config, found, host.trials, kept, probe, mean, std, per_epoch,
      {"wall_seconds": time.time() - start_time, "steps": step,
       "member_steps": member_steps, "steps_per_epoch": per_epoch})


def _epoch_end(host, halving, kind, metric, slot_steps, per_epoch,
               total_steps, states, kept, keep):
  """Finishes trials at the last step and decides rungs; returns the slots
  to refill."""
  arrivals = {}
  for slot, trial in enumerate(host.current):
    if trial is None:
      continue
    if slot_steps[slot] >= total_steps:
      host.stop(slot, "finished", int(slot_steps[slot]))
      if kind != "pbt":
        _keep_best(host, trial, states, kept, keep, metric)
    elif halving is not None:
      epoch = int(slot_steps[slot]) // per_epoch
      if epoch in halving.rungs:
        arrivals.setdefault(epoch, {})[slot] = trial.score(metric)
  for rung, scores in sorted(arrivals.items()):
    ids = {host.current[s].id: v for s, v in scores.items()}
    promoted = halving.decide(rung, ids)
    for slot in scores:
      trial = host.current[slot]
      if trial.id in promoted:
        trial.rungs_passed.append(rung)
      else:
        host.stop(slot, "stopped", int(slot_steps[slot]))
  if kind == "pbt":
    return []
  # Stopped, finished, and diverged earlier in the epoch: refilled now, at
  # the epoch end, so every slot's epochs keep ending on the same steps.
  return [slot for slot, t in enumerate(host.current) if t is None]


def _keep_best(host, trial, states, kept, keep, metric):
  """Keeps the host copy of `trial`'s final state if it is among the best
  `keep` finished trials (by validation score)."""
  kept[trial.id] = jax.device_get(sweep_steps.member_state(states, trial.slot))
  ranked = sorted(kept, key=lambda i: -host.trials[i].score(metric))
  for dropped in ranked[keep:]:
    del kept[dropped]


def _exploit(host, states, hparams, found, rng, slot_steps, metric):
  """PBT: the bottom quantile copies top members, then perturbs."""
  pbt, space = found["pbt"], found["space"]
  scores = [t.score(metric) for t in host.current]
  src = search_trials.exploit(scores, pbt["quantile"], rng)
  moved = [k for k in range(len(src)) if src[k] != k]
  if not moved:
    return states, hparams
  states = search_steps.gather_members(jnp.asarray(src), states)
  columns = {}
  for k in range(len(src)):
    columns[k] = dict(host.current[src[k]].values)
  for k in moved:
    factors = search_trials.explore_factors(pbt["perturbed"], pbt["factors"],
                                            rng)
    source = host.current[src[k]]
    values = dict(source.values)
    for name, factor in factors.items():
      values[name] = search_space.perturb(space, name, values[name], factor)
    step = int(slot_steps[src[k]])
    host.stop(k, "replaced", int(slot_steps[k]))
    host.start(k, values=values, parent=source.id, step=step)
    slot_steps[k] = step
    columns[k] = values
  # Copy batch iterators' positions: a copied member keeps its own data
  # order (its seed), from where it is.
  per_member = {name: [columns[k][name] for k in range(len(src))]
                for name in pbt["perturbed"]}
  # hparams rows follow the gather first (dropout, smoothing), then the
  # perturbed values overwrite them.
  hparams = jax.tree.map(lambda x: x[jnp.asarray(src)], hparams)
  return search_steps.with_hyperparameters(states, hparams, per_member)
