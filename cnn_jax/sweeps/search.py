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
vmapped step, compiled once for K (on the CPU: one member's step, compiled
once and called for each active slot, slot_steps.SlotSteps). Each slot
has its own step counter (TrainState.step, and the optimizer's count that
drives its schedule), its own data iterator (its trial's seed, from epoch
0) and its own hyperparameters (arrays fed to the step). Refills happen at
epoch ends, so every slot's epochs end on the same steps.

Selection reads only the validation split (config.data.val_fraction holds
one out of train when the data has none); the test split is evaluated once,
after the search, for the trials whose final states are kept (the best
3 finished ones; every member for PBT). Outputs: search_outputs.py.
Rerunning the same command after a kill resumes from the last epoch end
(search_resume.py): the same trials, decisions and final ranking. On
SIGTERM/SIGINT (or at config.train.stop_after_steps) a one-process search
saves its state at the current step, with the steps' unread divergence
flags, and raises preemption.Preempted (exit status 143 from launch.py), as
single runs do; several processes agree on a signal at the next epoch end
(one collective an epoch), after its checkpoint.

Several processes (launch.py --distributed): the slots and batches are
split over every device of every process (as a sweep's); the host state is
the same in every process (decisions read replicated validation metrics),
each process draws only its block of the stacked batches, and process 0
writes the files (search_outputs.py).
"""

import functools
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.runs import writers
from cnn_jax.distributed import mesh as parallel
from cnn_jax.distributed import multihost
from cnn_jax.sweeps import search_outputs
from cnn_jax.sweeps import search_resume
from cnn_jax.sweeps import search_settings
from cnn_jax.sweeps import search_space
from cnn_jax.sweeps import search_steps
from cnn_jax.sweeps import search_trials
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import matmul_precision
from cnn_jax.training import optim
from cnn_jax.training import preemption
from cnn_jax.training import steps

def evaluate_split(split, p_eval_step, states, dataset, batch_size, mesh):
  """Per-member metrics [{'accuracy', 'loss', 'count'}] of stacked `states`
  on `dataset` (every search evaluation goes through here: tests watch the
  `split` names)."""
  del split
  return sweep_steps.evaluate_members(p_eval_step, states, dataset,
                                      batch_size, mesh)


def _check_base(base):
  optim.check_schedule(base.optim, base.train.num_epochs)
  if base.get("task", "classification") != "classification":
    raise ValueError(f"config.task={base.task!r}: searches train "
                     "classification only")


def _check_val(base, splits):
  if "val" not in splits:
    raise ValueError(
        f"{base.data.name} has no validation split: set "
        "config.data.val_fraction (e.g. 0.1) so the search selects on data "
        "held out of train, never on the test split")


@matmul_precision.applied
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Runs the search `config` into `workdir`; returns its summary dict."""
  start_time = time.time()
  found = search_settings.settings(config)
  kind, metric, slots_count = found["kind"], found["metric"], found["slots"]
  probe = sweep_config.resolved_config(
      config, search_space.sample(found["space"], found["seed"], 0))
  _check_base(probe)  # before any I/O
  batch_size = probe.data.batch_size
  mesh = parallel.make_mesh(config.sweep.get("member_devices", 1))
  parallel.check_divisible(mesh, batch_size, slots_count,
                           members_key="config.sweep.slots")
  parallel.check_divisible(mesh, probe.data.eval_batch_size,
                           batch_key="config.data.eval_batch_size")
  block = sweep_steps.local_batch_block(mesh, slots_count, batch_size)
  splits = load_splits(probe.data)
  _check_val(probe, splits)
  search_outputs.prepare(workdir)
  train_set, val_set, test_set = splits["train"], splits["val"], splits["test"]
  mean, std = steps.normalization_stats(probe.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = probe.train.num_epochs * per_epoch
  program = sweep_steps.shared_program(probe, per_epoch)
  vary_dropout = "model.dropout_rate" in found["space"]
  if vary_dropout:
    sweep_steps.check_traced_dropout(program.model, train_set.example_shape)
  augment_configs = [probe.data.augment.to_dict()]
  width = sweep_steps.resolve_vmap_width(config.sweep, slots_count)
  on_members = parallel.member_sharding(mesh)
  everywhere = parallel.replicated(mesh)
  on_batch = parallel.batch_sharding(mesh, stacked=True)
  # The train step also takes the host's `active` slots: on the CPU one
  # member's program runs for each active slot (slot_steps.SlotSteps).
  p_train, p_eval = sweep_steps.jit_steps(
      program, augment_configs, mean=mean, std=std, member_count=slots_count,
      vary_dropout=vary_dropout, vmap_width=width,
      conv_impl=sweep_steps.resolve_conv_impl(config.sweep, width,
                                              slots_count),
      mesh=mesh, donate=False, per_slot=True)
  evaluate = functools.partial(
      evaluate_split, p_eval_step=p_eval, batch_size=probe.data.eval_batch_size,
      mesh=mesh)
  writers.report(
      f"{kind} search over {', '.join(found['space'])}: {found['trials']} "
      f"trials, {slots_count} at a time; {probe.data.name}: {len(train_set)} "
      f"train, {len(val_set)} val (selection), {len(test_set)} test (once, "
      "at the end)")

  # Each process draws only its block of the slots' stacked batches; the
  # host state (trials, decisions) is the same in every process.
  host = search_trials.Slots(config, found, train_set, batch_size, block)
  for slot in range(min(slots_count, found["trials"])):
    host.start(slot)

  def fresh_states():
    cfgs = [c or probe for c in host.configs]
    states, _ = sweep_steps.init_members(cfgs, train_set.example_shape,
                                         per_epoch, program)
    hparams = sweep_steps.hyperparameter_arrays(cfgs, augment_configs)
    return multihost.put((states, hparams), on_members)

  states, hparams = fresh_states()
  halving = (search_trials.Halving(found["halving"]["rungs"],
                                   found["halving"]["eta"])
             if kind == "halving" else None)
  rng = np.random.default_rng([found["seed"], 1])  # PBT's choices
  kept = {}  # trial id -> host copy of its final state (best `keep`)
  member_steps, step, meta = 0, 0, None
  if search_resume.can_resume(workdir):
    states, meta = search_resume.restore(workdir, states, config.to_dict(),
                                         everywhere)
    states = jax.device_put(states, on_members)
    host.restore(meta["slots"])
    if halving is not None:
      halving.restore(meta["halving"])
    rng.bit_generator.state = meta["rng"]
    step, member_steps = meta["step"], meta["member_steps_total"]
    kept = search_resume.restore_kept(workdir, meta["kept"], states,
                                      everywhere)
    hparams = multihost.put(sweep_steps.hyperparameter_arrays(
        [c or probe for c in host.configs], augment_configs), on_members)
    writers.report(f"resuming the search at step {step} ({host.next_id} "
                   "trials started)")
  bar = writers.progress_bar(None)
  # Between evaluations the step runs ahead of the host (no per-step sync):
  # `alive` stays on the device, as in sweep.py, and the steps' `updated`
  # flags are read at the next evaluation to find diverged trials.
  alive, window = None, []
  if meta is not None and meta.get("window"):  # saved mid-epoch (a signal)
    window = [np.asarray(row) for row in meta["window"]]
    alive = multihost.put(host.active() & np.all(window, 0), on_members)
  # One process acts on a stop signal at once (saving this step); several
  # act at the next epoch end, after its checkpoint, agreed by a collective
  # there (one an epoch, not one a step). train.stop_after_steps is the same
  # in every process: all stop at that step. A second signal acts as usual.
  stop, saved_at = preemption.StopRequest(), step
  stop_after = config.train.get("stop_after_steps", 0)
  alone = jax.process_count() == 1
  with stop:
    try:
      while any(t is not None for t in host.current):
        if (stop_after and step == stop_after) or (
            alone and stop.signum is not None):
          if saved_at != step:
            search_resume.save(workdir, states, step, _checkpoint_meta(
                config, host, halving, rng, step, member_steps, kept,
                window), set(kept))
          raise preemption.Preempted(stop.signum or signal.SIGTERM, step,
                                     workdir)
        if alive is None:
          alive = multihost.put(host.active(), on_members)
        active = host.active()
        states, alive, metrics = p_train(
            states, alive, multihost.global_array(host.batch(), on_batch),
            hparams, active)
        window.append(metrics["updated"])
        step += 1
        host.steps += active
        member_steps += int(active.sum())
        bar.update(1)
        epoch_end = step % per_epoch == 0
        pbt_due = kind == "pbt" and step % found["pbt"]["every_steps"] == 0
        if not (epoch_end or pbt_due):
          continue
        _diverged(host, np.asarray(jax.device_get(window)))
        window, alive = [], None  # slots change below: alive from the host
        results = evaluate("val", states=states, dataset=val_set)
        for slot, trial in enumerate(host.current):
          if trial is not None:
            trial.val.append((int(host.steps[slot]), results[slot]))
        if pbt_due and step < total_steps:
          states, hparams = _exploit(host, states, hparams, found, rng, metric)
          # Back on the step's shardings: an equal layout under another
          # sharding object would make jit compile the step again.
          states, hparams = jax.device_put((states, hparams), on_members)
        if not epoch_end:
          continue
        _epoch_end(host, halving, metric, per_epoch, total_steps, states,
                   kept, workdir, (mean, std))
        mask = np.zeros(slots_count, bool)
        if kind != "pbt":  # freed slots take the next trials, from step 0
          for slot in np.nonzero(~host.active())[0]:
            if host.next_id < found["trials"]:
              host.start(int(slot))
              mask[slot] = True
        if mask.any():  # the new trials' states, in place
          fresh, hparams = fresh_states()
          states = jax.device_put(search_steps.replace_slots(
              multihost.put(mask, on_members), fresh, states), on_members)
        search_resume.save(workdir, states, step, _checkpoint_meta(
            config, host, halving, rng, step, member_steps, kept, []),
                           set(kept))
        saved_at = step
        # Every process stops after this checkpoint when any one got
        # SIGTERM/SIGINT (one collective per epoch, as train.py's per call);
        # a search that has finished its trials finishes instead.
        if multihost.any_process(stop.signum is not None) and any(
            t is not None for t in host.current):
          raise preemption.Preempted(stop.signum or signal.SIGTERM, step,
                                     workdir)
    finally:
      bar.close()

  # The one look at the test split: the kept trials' final states.
  finished = [t for t in host.trials if t.id in kept]
  for start in range(0, len(finished), slots_count):
    group = finished[start:start + slots_count]
    rows = [kept[t.id] for t in group]
    rows += [rows[0]] * (slots_count - len(rows))  # padding, ignored
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    results = evaluate("test", states=multihost.put(stacked, on_members),
                       dataset=test_set)
    for trial, metrics in zip(group, results):
      trial.test = metrics
  return search_outputs.write(
      workdir, config, found, host.trials, kept, probe, mean, std, per_epoch,
      {"wall_seconds": time.time() - start_time, "steps": step,
       "member_steps": member_steps, "steps_per_epoch": per_epoch})


def _checkpoint_meta(config, host, halving, rng, step, member_steps, kept,
                     window):
  """The search checkpoint's host state at `step` (search_resume.py);
  `window`: the steps' `updated` flags [T][K] not yet read (a save between
  epoch ends, on a signal), so a resumed search finds the same divergences."""
  return {"step": step, "member_steps_total": member_steps,
          "slots": host.state(), "rng": rng.bit_generator.state,
          "halving": halving.state() if halving else None,
          "kept": sorted(kept), "config": config.to_dict(),
          "window": np.asarray(jax.device_get(window), bool).tolist()}


def _diverged(host, updated):
  """Stops the trials whose step failed in the window (updated: bool
  [T, K]; a failing member's state stayed at its last finite value)."""
  for slot, trial in enumerate(host.current):
    if trial is None or updated[:, slot].all():
      continue
    good = int(np.argmin(updated[:, slot]))  # steps before the failing one
    host.stop(slot, "diverged",
              int(host.steps[slot]) - len(updated) + good)
    writers.report(f"trial {trial.id} (slot {slot}) diverged at step "
                   f"{trial.stop_step + 1}; its state is kept from the step "
                   "before")


def _epoch_end(host, halving, metric, per_epoch, total_steps, states, kept,
               workdir, normalization):
  """Finishes the trials at their last step (keeping the best final states)
  and applies halving's rung rule; the freed slots are then idle."""
  arrivals = {}
  for slot, trial in enumerate(host.current):
    if trial is None:
      continue
    if host.steps[slot] >= total_steps:
      host.stop(slot, "finished", int(host.steps[slot]))
      _keep_best(host, trial, states, kept, metric, workdir, normalization)
    elif halving is not None:
      epoch = int(host.steps[slot]) // per_epoch
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
        host.stop(slot, "stopped", int(host.steps[slot]))


def _keep_best(host, trial, states, kept, metric, workdir, normalization):
  """Keeps `trial`'s final state (on the host, and in kept/<trial>/ for a
  resume) if it is among the best KEEP finished trials by validation score
  (PBT: every final member)."""
  kept[trial.id] = jax.device_get(sweep_steps.member_state(states, trial.slot))
  ranked = sorted(kept, key=lambda i: -host.trials[i].score(metric))
  if host.found["kind"] != "pbt":
    for dropped in ranked[host.found["keep"]:]:
      del kept[dropped]
  if trial.id in kept:
    mean, std = normalization
    search_resume.save_kept(workdir, trial.id, kept[trial.id], {
        "trial": trial.id, "config": host.configs[trial.slot].to_dict(),
        "normalization": {"mean": mean.tolist(), "std": std.tolist()}})


def _exploit(host, states, hparams, found, rng, metric):
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
    step = int(host.steps[src[k]])
    host.stop(k, "replaced", int(host.steps[k]))
    host.start(k, values=values, parent=source.id, step=step)
    columns[k] = values
  # Copy batch iterators' positions: a copied member keeps its own data
  # order (its seed), from where it is.
  per_member = {name: [columns[k][name] for k in range(len(src))]
                for name in pbt["perturbed"]}
  # hparams rows follow the gather first (dropout, smoothing), then the
  # perturbed values overwrite them.
  hparams = jax.tree.map(lambda x: x[jnp.asarray(src)], hparams)
  return search_steps.with_hyperparameters(states, hparams, per_member)
