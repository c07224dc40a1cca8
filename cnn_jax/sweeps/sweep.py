"""Sweeps in one program: K training runs ("members") stacked and vmapped.

A sweep is a config with a `sweep` section (configs/mnist_sweep.py) whose
axes name the config keys the members differ in. Three modules:
  * cnn_jax/sweeps/sweep_config.py: the sweep section -> each member's config,
    exactly the config of the single run it stands for;
  * cnn_jax/sweeps/sweep_steps.py: the members' TrainStates stacked [K, ...] and
    the jitted steps that vmap training.steps.train_step over them, isolating a
    member that diverges;
  * this module: the run (train_and_evaluate): chunks of members trained
    together, logged, evaluated;
  * cnn_jax/sweeps/sweep_outputs.py: what it writes (member run folders,
    the sweep's metrics.jsonl, the ranking in summary.json / summary.md).

Memory: `sweep.chunk` members run at once; more run chunk after chunk with
the same compiled program (the last chunk is padded with masked-out copies).

Devices: a ('members', 'data') mesh (cnn_jax/distributed/mesh.py) over
every device of every process. Each batch is split over 'data' (data
parallelism, parameters replicated); with `sweep.member_devices` > 1 the
members are split over 'members' as well. With several processes each one
draws only its block of the stacked batches (sweep_steps.local_batch_block)
and every one runs this same function; process 0 writes the files, all of
them save the members' checkpoints (Orbax).

Outputs in the sweep's workdir:
  members/<k>/   an ordinary run folder per member (summary.json with its
                 resolved config, metrics.jsonl, tensorboard/, checkpoints/):
                 `launch.py --config <sweep config> --mode=evaluate
                 --workdir <sweep>/members/<k>` evaluates it as a single run;
  metrics.jsonl  every member's records, with a 'member' field;
  summary.json, summary.md   the members ranked by test accuracy.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.distributed import mesh as parallel
from cnn_jax.distributed import multihost
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_outputs
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import matmul_precision
from cnn_jax.training import optim
from cnn_jax.training import steps
from cnn_jax.transfer import plan as transfer_plan


def _check_supported(config):
  # Members share the schedule (sweep_config lets them differ in none of
  # its keys, nor in train.num_epochs): checked once, before any I/O.
  optim.check_schedule(config.optim, config.train.num_epochs)
  if config.get("task", "classification") != "classification":
    raise ValueError(f"config.task={config.task!r}: sweeps train "
                     "classification only")
  transfer_config = config.get("transfer")
  if transfer_config is not None and transfer_plan.is_active(transfer_config):
    raise ValueError("sweeps do not support config.transfer (partial "
                     "restore); run those members as single runs")


def _member_batches(train_set, batch_size, seeds,
                    block=(slice(None), slice(None))):
  """Yields (position, {'image': [k, b, ...], 'label': [k, b]}): this
  process's block of the stacked batch [K, B, ...], block = (members, rows)
  (sweep_steps.local_batch_block; all of it with one process): member k's
  batch from its own seed's order (one host iterator per distinct seed
  among this process's members), only the rows its devices hold."""
  members, rows = block
  seeds = list(seeds)[members]
  distinct = sorted(set(seeds))
  iterators = [batching.train_batches(train_set, batch_size, s, rows=rows)
               for s in distinct]
  which = [distinct.index(s) for s in seeds]
  for items in zip(*iterators):
    position = items[0][0]
    batches = [b for _, b in items]
    yield position, {key: np.stack([batches[r][key] for r in which])
                     for key in batches[0]}


def _chunks(count, size):
  return [list(range(start, min(start + size, count)))
          for start in range(0, count, size)]



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


def _compiled_steps(cache, program, augment_configs, vary_dropout, mean, std,
                    chunk_size, width, mesh, conv_impl=None):
  """The jitted (train_step, eval_step) for these static settings, compiled
  once and reused by every chunk that shares them."""
  key = (json.dumps(augment_configs, sort_keys=True), vary_dropout)
  if key not in cache:
    cache[key] = sweep_steps.jit_steps(
        program, augment_configs, mean=mean, std=std, member_count=chunk_size,
        vary_dropout=vary_dropout, vmap_width=width, conv_impl=conv_impl,
        mesh=mesh)
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
  main = multihost.is_main()  # process 0 writes the sweep's files
  for index in indices:
    member_dir = os.path.join(run["workdir"], "members", str(index))
    if main:
      with workdirs.writing(run["workdir"]):
        os.makedirs(member_dir)
    members.append(sweep_outputs.Member(
        index, overrides[index], configs[index], member_dir,
        writers.MetricWriter(member_dir) if main else writers.NullWriter()))
  members += [None] * (chunk_size - len(indices))

  batch_size = base.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = base.train.num_epochs * per_epoch
  states, _ = sweep_steps.init_members(chunk_configs, train_set.example_shape,
                                       per_epoch, program)
  augment_configs = sweep_steps.distinct_augmentations(chunk_configs)
  p_train_step, p_eval_step = _compiled_steps(
      run["compiled"], program, augment_configs, run["vary_dropout"], mean,
      std, chunk_size, run["vmap_width"], mesh, run["conv_impl"])
  # The same values in every process (the same seeds): each places its
  # devices' members.
  states, alive, hparams = multihost.put(
      (states, np.asarray([m is not None for m in members]),
       sweep_steps.hyperparameter_arrays(chunk_configs, augment_configs)),
      parallel.member_sharding(mesh))

  def evaluate_members(step, epoch, log):
    results = sweep_steps.evaluate_members(p_eval_step, states, test_set,
                                           base.data.eval_batch_size, mesh)
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
      _member_batches(train_set, batch_size,
                      [c.seed for c in chunk_configs],
                      sweep_steps.local_batch_block(mesh, chunk_size,
                                                    batch_size)),
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
      # Every process saves (Orbax writes the replicated member state once).
      saved_step = sweep_outputs.save_member(
          member, sweep_steps.member_state(states, slot), mean, std,
          per_epoch, member.test_metrics)
      if main:
        sweep_outputs.write_member_summary(
            member, run["workdir"], saved_step, run["start_time"], throughput,
            len(indices), mean, std)
      member.writer.close()
  return [m for m in members if m is not None], throughput


@matmul_precision.applied
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains every member of the sweep `config` into `workdir` (see the
  module docstring for the layout). Returns the sweep's summary dict.

  Raises FloatingPointError (after writing every result) if all members
  diverged.
  """
  start_time = time.time()
  overrides, configs = sweep_config.member_configs(config)
  base = configs[0]
  _check_supported(base)
  sweep_section = config.sweep  # not sweep_config: that names the module
  if sweep_section.get("chunk", 0) < 0:
    raise ValueError(f"config.sweep.chunk={sweep_section.chunk} must be >= 0 "
                     "(0: all members at once)")
  chunk_size = min(sweep_section.get("chunk", 0) or len(configs), len(configs))
  mesh = parallel.make_mesh(sweep_section.get("member_devices", 1))
  parallel.check_divisible(mesh, base.data.batch_size, chunk_size)
  parallel.check_divisible(mesh, base.data.eval_batch_size,
                           batch_key="config.data.eval_batch_size")
  sweep_steps.local_batch_block(mesh, chunk_size, base.data.batch_size)
  sweep_outputs.prepare(workdir)
  splits = load_splits(base.data)
  train_set, test_set = splits["train"], splits["test"]
  mean, std = steps.normalization_stats(base.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), base.data.batch_size)
  program = sweep_steps.shared_program(base, per_epoch)
  vary_dropout = len({c.model.dropout_rate for c in configs}) > 1
  if vary_dropout:
    sweep_steps.check_traced_dropout(program.model, train_set.example_shape)
  chunks = _chunks(len(configs), chunk_size)
  names = sorted(overrides[0])
  writers.report(
      f"sweep of {len(configs)} members over {', '.join(names)} "
      f"({sweep_section.get('mode', 'grid')}), {chunk_size} at a time on "
      f"{mesh.devices.size} device(s) of {jax.process_count()} process(es) "
      f"(mesh {dict(mesh.shape)}); "
      f"{base.data.name}: {len(train_set)} train, {len(test_set)} test")

  vmap_width = sweep_steps.resolve_vmap_width(sweep_section, chunk_size)
  run = {"workdir": workdir, "start_time": start_time, "mesh": mesh,
         "chunk_size": chunk_size, "program": program,
         "vary_dropout": vary_dropout, "compiled": {},
         "vmap_width": vmap_width,
         "conv_impl": sweep_steps.resolve_conv_impl(sweep_section, vmap_width,
                                                    chunk_size),
         "writer": (sweep_outputs.SweepWriter(workdir) if multihost.is_main()
                    else sweep_outputs.NullSweepWriter()),
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

  summary, table = sweep_outputs.write_ranking(
      workdir, config, members, names, chunk_size, mesh,
      steps=base.train.num_epochs * per_epoch, start_time=start_time,
      throughputs=throughputs)
  all_diverged = summary["status"] == "diverged"
  writers.report(table)
  if all_diverged:
    raise FloatingPointError(
        "every member of the sweep diverged (non-finite loss or parameters); "
        "lower config.optim.learning_rate or add config.optim.grad_clip_norm")
  return summary
