"""The training loop: train_and_evaluate in named phases (prepare the run,
build or restore the state, the step loop, finish); evaluate_checkpoint is
training/resume.py's.

The pure pieces (model, state, steps, evaluation) are training/steps.py;
the run folder on disk is runs/; transfer learning enters through one
transfer.hooks.TransferHooks (its state hooks and one per-step hook).
"""

import dataclasses
import functools
import os
import signal
import time
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data import input_pipeline
from cnn_jax.data import input_wait
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.distributed import multihost
from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.tasks import task_for_run
from cnn_jax.training import matmul_precision
from cnn_jax.training import multistep
from cnn_jax.training import optim
from cnn_jax.training import preemption
from cnn_jax.training import resume
from cnn_jax.training import run_end
from cnn_jax.training import steps
from cnn_jax.training import train_log
from cnn_jax.training.train_log import DivergedError
from cnn_jax.transfer import hooks


@dataclasses.dataclass(frozen=True)
class Run:
  """What every phase of one train_and_evaluate call reads: the config, the
  data and everything derived from them once, before the first step."""

  config: ml_collections.ConfigDict
  workdir: str
  start_time: float
  steps_per_call: int
  resuming: bool  # from the latest intact checkpoint in workdir
  restarting: bool  # an earlier attempt saved no complete checkpoint
  train_set: Any
  test_set: Any
  task: Any
  mean: np.ndarray  # [C], the normalisation the run uses
  std: np.ndarray  # [C]
  steps_per_epoch: int
  total_steps: int
  schedule: Any  # the learning rate as a function of the step
  transfer: hooks.TransferHooks
  run_meta: dict  # saved with every checkpoint: config, normalization
  mesh: Any  # ('members', 'data'): (1, every device of every process)

  @property
  def continues(self):
    """Whether an earlier attempt's records are in workdir (resuming or
    restarting): the new records supersede those after the start step."""
    return self.resuming or self.restarting

  def wall_seconds(self):
    return time.time() - self.start_time


class LoopEnd(NamedTuple):
  """Where the step loop stopped."""

  state: Any
  step: int
  test_metrics: Optional[dict]
  signum: Optional[int]  # the stop signal when preempted, else None
  train_img_per_s: float


def _prepare_run(config, workdir):
  """Checks the config and workdir, loads the data: the Run."""
  start_time = time.time()
  # Checked before any I/O: a bad value leaves the workdir untouched.
  per_call = multistep.steps_per_call(config.train)
  mesh = mesh_lib.run_mesh(config)
  mesh_lib.check_divisible(mesh, config.data.batch_size)
  optim.check_schedule(config.optim, config.train.num_epochs)
  workdirs.check_writable(workdir)  # an existing workdir, before any write
  # An earlier attempt's records (looked for before this run writes any).
  used = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  resuming = workdirs.prepare(workdir, config, checkpoint.saved_steps(workdir))
  # Every process has looked at the workdir before process 0 writes to it.
  multihost.barrier("workdir prepared")
  splits = load_splits(config.data)
  train_set, test_set = splits["train"], splits["test"]
  task = task_for_run(config, train_set)  # config.task, fitted to train
  mean, std = steps.normalization_stats(config.data, train_set)
  writers.report(f"{config.data.name}: {len(train_set)} train, "
                 f"{len(test_set)} test examples of shape "
                 f"{train_set.example_shape}")
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  return Run(
      config=config, workdir=workdir, start_time=start_time,
      steps_per_call=per_call, resuming=resuming,
      # Killed before its first complete checkpoint: the same run from 0.
      restarting=used and not resuming,
      train_set=train_set, test_set=test_set, task=task, mean=mean, std=std,
      steps_per_epoch=per_epoch,
      total_steps=config.train.num_epochs * per_epoch,
      schedule=steps.learning_rate_schedule(config, per_epoch),
      transfer=hooks.TransferHooks(config.get("transfer"), per_epoch),
      run_meta={"config": config.to_dict(),
                "normalization": {"mean": mean.tolist(),
                                  "std": std.tolist()}},
      mesh=mesh)


def _initial_state(run):
  """(state, progress): the latest checkpoint's when resuming, else a fresh
  state (with transfer.init_from restored) at step 0."""
  replicated = mesh_lib.replicated(run.mesh)
  if run.resuming:
    return resume.restore_latest(run.config, run.workdir,
                                 run.train_set.example_shape,
                                 run.steps_per_epoch, sharding=replicated)
  state, _ = steps.create_train_state(
      run.config, jax.random.PRNGKey(run.config.seed),
      run.train_set.example_shape, run.steps_per_epoch)
  state = run.transfer.initial_state(state, writers.report)
  # The same values in every process (the same seed): one copy per device.
  return (jax.device_put(jax.device_get(state), replicated),
          resume.fresh_progress())


def _compiled_steps(run):
  """(train_call, eval_fn): jitted; train_call runs steps_per_call steps."""
  config = run.config
  step_fn = functools.partial(steps.train_step, mean=run.mean, std=run.std,
                              augment_config=config.data.augment.to_dict(),
                              label_smoothing=config.train.label_smoothing,
                              task=run.task)
  # N > 1: each call scans over N stacked batches (training/multistep.py).
  # Calls end at epoch ends, so the last call of an epoch runs
  # steps_per_epoch % N steps: one more compiled shape, rather than padding
  # and masking steps, which would still cost their compute.
  # The scan stays a loop on every backend. (Earlier XLA:CPU versions ran a
  # step inside a while loop ~1.6x slower, so the CPU unrolled it; now the
  # loop steps as fast or faster and compiles in about a second whatever N
  # is: MNIST CNN, batch 256, bf16 matmuls, 29 ms a step as a 6-step loop,
  # 28 as a 39-step loop, 32 unrolled (1.4, 1.3, 3.4 s to compile); float32
  # 42, 39, 39 ms. AMD EPYC [avx2 avx512_bf16 avx512f], `python
  # experiments/bench_startup.py --configs "" --spc 6:full,6,39 --rounds 5`.)
  # Data parallel over run.mesh: the state replicated, each batch split
  # along 'data' (XLA all-reduces the gradients and BatchNorm's batch
  # statistics, so the step is the one-device step on the global batch).
  replicated = mesh_lib.replicated(run.mesh)
  train_call = jax.jit(
      step_fn if run.steps_per_call == 1
      else multistep.make_multi_step(step_fn),
      in_shardings=(replicated, _batch_sharding(run)),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=run.mean,
                                      std=run.std, task=run.task),
                    in_shardings=(replicated,
                                  mesh_lib.batch_sharding(run.mesh)))
  return train_call, eval_fn


def _batch_sharding(run):
  """Where a call's batches [B, ...] or [N, B, ...] go: B along 'data'."""
  return mesh_lib.batch_sharding(run.mesh,
                                 steps_axis=run.steps_per_call > 1)


def _open_outputs(run, step, position):
  """(checkpoint manager, metric writer), after the run's first writes."""
  config, workdir = run.config, run.workdir
  # The run's first writes (checkpoints/, metrics.jsonl, tensorboard/): a
  # file in the way, no permission, a read-only or full disk is one line.
  main = multihost.is_main()  # process 0 writes the run's files
  with workdirs.writing(workdir):
    if main:
      workdirs.write_config(workdir, config)  # what a restart is checked against
      unfinished = checkpoint.remove_unfinished(workdir)  # cut short by a kill
      if unfinished:
        writers.report("removed unfinished checkpoint(s): "
                       + ", ".join(unfinished))
    multihost.barrier("unfinished checkpoints removed")
    manager = checkpoint.make_manager(workdir, config.checkpoint)
    writer = (writers.MetricWriter(
        workdir, purge_step=step + 1 if run.continues else None) if main
              else writers.NullWriter())
    if run.continues:
      # Supersedes the records logged after `step` (writers.drop_superseded).
      writer.write(step, "resumed", {"epoch": step / run.steps_per_epoch})
    if run.resuming:
      writers.report(f"resuming from the checkpoint of step {step} "
                     f"(epoch {position.epoch}, batch {position.batch})")
    if run.restarting:
      writers.report(f"no complete checkpoint in {workdir}: starting the run "
                     "again from step 0 (the earlier attempt's records stay "
                     "in metrics.jsonl, superseded)")
  return manager, writer


def _evaluate_and_report(run, eval_fn, state, step, epoch, writer):
  """The test metrics of `state`, written and reported."""
  task = run.task
  test_metrics = steps.evaluate(eval_fn, state, run.test_set,
                                run.config.data.eval_batch_size, task,
                                sharding=mesh_lib.batch_sharding(run.mesh))
  writer.write(step, "test", {**test_metrics, "epoch": epoch})
  headline = ("" if task.headline == "accuracy" else
              f"{task.headline} {test_metrics[task.headline]:.4f} ")
  writers.report(
      f"epoch {epoch} step {step}: test {headline}accuracy "
      f"{test_metrics['accuracy']:.4f} loss {test_metrics['loss']:.4f}")
  return test_metrics


def _interval_crossed(previous, step, every):
  """Whether a multiple of `every` (0: never) lies in (previous, step]."""
  return bool(every) and step // every > previous // every


def _checkpoint_due(run, manager, previous, step, evaluated):
  """Whether the call that took the run from `previous` to `step` ends with
  a checkpoint (besides a stop): at the end, by the manager's policy, every
  checkpoint.every_steps, or after an evaluation kept by its metric."""
  config = run.config
  return (step == run.total_steps or manager.should_save(step)
          or _interval_crossed(previous, step, config.checkpoint.every_steps)
          or (evaluated and bool(config.checkpoint.keep_best_metric)))


def _train_steps(run, state, progress, train_call, eval_fn):
  """The step loop, from `progress` to the end of the run or a stop (a
  signal or train.stop_after_steps): LoopEnd.

  Raises FloatingPointError on a non-finite loss, after writing the
  'diverged' summary (the last checkpoint predates the NaN).
  """
  config = run.config
  batch_size = config.data.batch_size
  step = progress["step"]
  position = batching.IteratorPosition(**progress["position"])
  # float32 again (JSON made them float64), for bitwise-equal window means.
  pending = [{k: np.float32(v) for k, v in record.items()}
             for record in progress["pending_metrics"]]
  test_metrics = progress["test_metrics"]
  manager, writer = _open_outputs(run, step, position)
  bar = writers.progress_bar(run.total_steps, initial=step)
  log = train_log.TrainLog(writer, bar, run.schedule, run.steps_per_epoch,
                           config.train.log_every_steps, pending)
  stop, stopping = preemption.StopRequest(), False
  # config.data.pipeline: the in-memory iterator or Grain workers; both
  # yield (position, host batch), the position saved with checkpoints.
  # Each process reads only its rows of every global batch.
  host_batches = input_pipeline.train_batches(
      config.data, run.train_set, config.seed, position,
      num_batches=run.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count())
  if run.steps_per_call > 1:
    host_batches = multistep.group_batches(host_batches, run.steps_per_call)
  # Double-buffered: the next call's batches are drawn and sent while this
  # call runs. Waiting for them for long is reported (input_wait.py).
  batches = input_wait.monitored(
      prefetch.prefetch_to_device(host_batches, size=2,
                                  sharding=_batch_sharding(run)),
      every=max(1, config.train.log_every_steps // run.steps_per_call),
      report=writers.report, hint=" (config.data.pipeline='grain' with more "
      "config.data.workers decodes in parallel processes)")
  try:
    with stop:
      for position, batch in batches:
        if step >= run.total_steps:
          break
        # After transfer.unfreeze_after_epochs: the unfrozen forward pass.
        # Calls never cross an epoch, so the phase is the same for each of
        # their steps.
        state = run.transfer.at_step(state, step)
        state, call_metrics = train_call(state, batch)
        # [n, B, ...] when a call runs n steps.
        count = 1 if run.steps_per_call == 1 else batch["image"].shape[0]
        previous, step = step, step + count
        epoch_done = position.batch == 0
        log.add(call_metrics, previous, step, count * batch_size, epoch_done)
        evaluated = epoch_done and (
            position.epoch % config.train.eval_every_epochs == 0
            or step == run.total_steps)
        if evaluated:
          test_metrics = _evaluate_and_report(run, eval_fn, state, step,
                                              position.epoch, writer)
          log.pause()  # evaluation time is not training time
        # Stops, and step-based checkpoints, that fall inside a call happen
        # at its end: the first call boundary at or after the step.
        if previous < config.train.stop_after_steps <= step:
          stop.request()
        # Read once: a signal arriving later is handled after the next call.
        # Every process stops (and saves) after the same call when any one
        # got a signal (or its clock says checkpoint.every_seconds passed):
        # one collective, so the processes never disagree on what they save.
        stopping, due = multihost.any_process(
            stop.signum is not None,
            _checkpoint_due(run, manager, previous, step, evaluated))
        if stopping and stop.signum is None:
          stop.signum = signal.SIGTERM  # another process's stop
        if stopping or due:
          resume.save_checkpoint(manager, state, position, log.pending,
                           test_metrics, evaluated, run.run_meta)
        if stopping:
          break
  except FloatingPointError as e:
    # The last checkpoint predates the NaN (a poisoned state is never saved).
    manager.wait_until_finished()
    run_end.write_summary(run.workdir, {
        "status": "diverged",
        "step": e.step if isinstance(e, DivergedError) else step,
        "error": str(e), "last_checkpoint": manager.latest_step(),
        "wall_seconds": run.wall_seconds(), "config": config.to_dict()})
    raise
  finally:
    batches.close()
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()
  return LoopEnd(state, step, test_metrics,
                 stop.signum if stopping else None, log.train_img_per_s)


@matmul_precision.applied
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains config.model on config.data, writing logs, curves, checkpoints
  and summary.json into `workdir`. Returns the summary dict.

  Rerunning with the same workdir resumes from the latest intact checkpoint:
  same step, data order and RNG stream, so the result is bitwise the same as
  an uninterrupted run (on CPU); with no complete checkpoint yet (a run
  killed in its first minutes), the same config starts again from step 0.
  On SIGTERM/SIGINT it finishes the current call
  (config.train.steps_per_call steps), saves a checkpoint and raises
  preemption.Preempted. On a non-finite loss it raises FloatingPointError,
  keeping the last good checkpoint, with status 'diverged' in summary.json.

  Data parallel on every device of every process (config.mesh); with
  several processes all call this alike and process 0 writes the files.

  With config.train.steps_per_call = N > 1, a checkpoint due inside a call
  (checkpoint.every_steps, train.stop_after_steps) is saved at the call's
  end; logs, evaluations and unfreezing fall on the same steps as with N = 1.
  """
  run = _prepare_run(config, workdir)
  state, progress = _initial_state(run)
  train_call, eval_fn = _compiled_steps(run)
  end = _train_steps(run, state, progress, train_call, eval_fn)
  return run_end.finish(run, end, start_step=progress["step"])


# --mode=evaluate: restores a checkpoint onto this run's mesh and evaluates it.
evaluate_checkpoint = resume.evaluate_checkpoint
