"""Training and evaluation: create_model -> create_train_state -> train_step /
eval_step -> train_and_evaluate. Reads top to bottom like flax/examples."""

import dataclasses
import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.runs import checkpoint
from cnn_jax.training import multistep
from cnn_jax.training import optim
from cnn_jax.training import preemption
from cnn_jax.training import train_log
from cnn_jax.transfer import transfer
from cnn_jax.reports import visualize
from cnn_jax.runs import workdirs
from cnn_jax.runs import writers
from cnn_jax.data import augment
from cnn_jax.data import batching
from cnn_jax.data import channel_stats
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.models import MODELS
from cnn_jax.tasks import CLASSIFICATION
from cnn_jax.tasks import get_task
from cnn_jax.tasks import task_for_run
from cnn_jax.training.train_log import DivergedError
from cnn_jax.training.train_state import TrainState

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config):
  """The Linen module named by config.model.name, with the other keys of
  config.model as constructor arguments."""
  name = model_config.name
  if name not in MODELS:
    raise ValueError(
        f"config.model.name={name!r} is not one of: {', '.join(sorted(MODELS))}")
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  if "dtype" in kwargs:
    if kwargs["dtype"] not in _DTYPES:
      raise ValueError(f"config.model.dtype={kwargs['dtype']!r} is not one "
                       f"of: {', '.join(_DTYPES)}")
    kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"config.model has a key that model {name!r} does not "
                     f"take: {e}") from e


def initialized(rng, model, example_shape):
  """Initial (params, batch_stats) for inputs of shape [B, *example_shape]."""
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": rng, "dropout": rng}, dummy)
  return variables["params"], variables.get("batch_stats", {})


def learning_rate_schedule(config, steps_per_epoch):
  """The learning rate as a function of the step, over the whole run."""
  optim.check_schedule(config.optim, config.train.num_epochs, steps_per_epoch)
  total_steps = config.train.num_epochs * steps_per_epoch
  return optim.make_schedule(config.optim, total_steps, steps_per_epoch)


def create_train_state(config, rng, example_shape, steps_per_epoch):
  """A fresh TrainState and the learning-rate schedule it follows."""
  model = create_model(config.model)
  params, batch_stats = initialized(rng, model, example_shape)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  tx = optim.make_optimizer(config.optim, schedule)
  apply_fn = model.apply
  transfer_config = config.get("transfer")  # configs without it: no transfer
  if transfer.is_active(transfer_config):
    # Frozen and per-learning-rate parameter groups, frozen BatchNorm
    # (cnn_jax/transfer/transfer.py); train_and_evaluate restores transfer.init_from.
    tx, apply_fn = transfer.optimizer_and_apply(
        transfer_config, config.optim, schedule, steps_per_epoch,
        model.apply, {"params": params, "batch_stats": batch_stats})
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params),
                     rng=jax.random.fold_in(rng, 1), apply_fn=apply_fn,
                     tx=tx)
  return state, schedule


def abstract_train_state(config, example_shape, steps_per_epoch):
  """The shapes and dtypes of create_train_state's TrainState (nothing is
  computed or compiled): what a checkpoint is restored into."""
  rng = jax.random.PRNGKey(config.seed)
  return jax.eval_shape(lambda: create_train_state(
      config, rng, example_shape, steps_per_epoch)[0])


def train_inputs(state, batch, key, *, mean, std, augment_config=None):
  """(images, soft_targets) for one training step.

  images: batch['image'] augmented with `key` (in pixel units, [0, 255]),
  then normalised: float32 [B, H, W, C]. soft_targets: [B, K] from
  mixup/cutmix when the config turns them on, else None.
  """
  images = augment.augment_batch(batch["image"].astype(jnp.float32), key,
                                 augment_config)
  images = augment.normalize(images, mean, std)
  if not augment.mixes_labels(augment_config):
    return images, None
  # K for the soft targets, from the model's output shape (no compute).
  logits_shape = jax.eval_shape(lambda x: state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, x,
      train=False), images)
  return augment.mix_batch(images, batch["label"], jax.random.fold_in(key, 1),
                           augment_config, num_classes=logits_shape.shape[-1])


def gradient_step(state, batch, images, targets, dropout_key, *,
                  label_smoothing=0.0, task=CLASSIFICATION):
  """One optimizer step on prepared inputs (train_inputs) for `batch`'s
  labels -> (new_state, {'loss', **task.train_metrics})."""

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    loss_batch = batch if targets is None else {**batch,
                                                "soft_target": targets}
    loss = jnp.mean(task.loss(logits, loss_batch, label_smoothing))
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # value=loss: for a reduce-on-plateau optimizer (optim.py), ignored else.
  return state.apply_gradients(grads, batch_stats, value=loss), {
      "loss": loss, **task.train_metrics(logits, batch)}


def train_step(state, batch, *, mean, std, augment_config=None,
               label_smoothing=0.0, task=CLASSIFICATION):
  """One SGD step on batch {'image': [B,H,W,C] uint8/float, 'label': int [B]}.

  Augmentation (in pixel units, [0, 255]) and then normalisation happen here,
  on device, with keys derived from (state.rng, state.step), so the step is a
  pure function of its inputs. With mixup/cutmix on, the loss uses the soft
  targets they return; accuracy is always against the unmixed labels.
  Returns (new_state, {'loss', 'accuracy'}).
  (cnn_jax/sweeps/sweep_steps.py vmaps the same two halves, train_inputs and
  gradient_step, over sweep members.)
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images, targets = train_inputs(state, batch, augment_key, mean=mean,
                                 std=std, augment_config=augment_config)
  return gradient_step(state, batch, images, targets, dropout_key,
                       label_smoothing=label_smoothing, task=task)


def eval_step(state, batch, *, mean, std, task=CLASSIFICATION):
  """(sums, per-example outputs) over the unmasked examples of a batch."""
  images = augment.normalize(batch["image"], mean, std)
  logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, images,
      train=False)
  examples = task.eval_examples(logits, batch) if task.eval_examples else {}
  return task.eval_sums(logits, batch), examples


def evaluate(eval_fn, state, dataset, batch_size, task=CLASSIFICATION):
  """Metrics over every example of `dataset` (the last batch padded+masked)."""
  totals, kept = None, []
  for batch in batching.eval_batches(dataset, batch_size):
    sums, examples = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if examples:
      kept.append(jax.tree.map(lambda x, m=batch["mask"]: np.asarray(x)[m],
                               examples))
  examples = (jax.tree.map(lambda *xs: np.concatenate(xs), *kept)
              if kept else {})
  return task.finalize(jax.device_get(totals), examples)


def normalization_stats(data_config, train_set):
  """(mean, std) per channel: from the config, or measured on the train set."""
  if data_config.mean and data_config.std:
    return (np.asarray(data_config.mean, np.float32),
            np.asarray(data_config.std, np.float32))
  return channel_stats(train_set.images)


def _interval_crossed(previous, step, every):
  """Whether a multiple of `every` (0: never) lies in (previous, step]."""
  return bool(every) and step // every > previous // every


def _fresh_progress():
  """Where a new run starts (the same keys as a checkpoint's meta)."""
  return {"step": 0, "position": {"epoch": 0, "batch": 0},
          "pending_metrics": [], "test_metrics": None}


def _resume(config, workdir, example_shape, steps_per_epoch):
  """(state, meta) of the latest intact checkpoint in `workdir`.

  The checkpoint's config must match `config` (workdirs.check_resumable).
  Damaged checkpoints newer than the one used are set aside, so the resumed
  run can save those steps again.
  """
  abstract = abstract_train_state(config, example_shape, steps_per_epoch)
  manager = checkpoint.make_manager(workdir)
  state, meta = checkpoint.restore_latest(
      manager, abstract, check_meta=lambda meta: workdirs.check_resumable(
          meta["config"], config, meta["step"]))
  manager.close()
  with workdirs.writing(workdir):
    checkpoint.set_aside(workdir, [s for s in checkpoint.saved_steps(workdir)
                                   if s > meta["step"]])
  return state, meta


def _save_checkpoint(manager, state, position, pending, test_metrics,
                     evaluated, run_meta):
  """Saves `state` with what resuming needs: the iterator position, the
  current log window's per-step metrics (so the resumed run logs the same
  windows), the latest test metrics, and `run_meta` (config, normalization).
  """
  records = multistep.host_records(pending)
  step = int(state.step)
  train_log.check_finite(records, step - len(records))  # names a NaN's step
  meta = {"step": step, "position": dataclasses.asdict(position),
          "pending_metrics": [{k: float(v) for k, v in r.items()}
                              for r in records],
          "test_metrics": test_metrics, **run_meta}
  checkpoint.save(manager, state, meta,
                  metrics=test_metrics if evaluated else None)


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

  With config.train.steps_per_call = N > 1, a checkpoint due inside a call
  (checkpoint.every_steps, train.stop_after_steps) is saved at the call's
  end; logs, evaluations and unfreezing fall on the same steps as with N = 1.
  """
  start_time = time.time()
  # Checked before any I/O: a bad value leaves the workdir untouched.
  per_call = multistep.steps_per_call(config.train)
  optim.check_schedule(config.optim, config.train.num_epochs)
  workdirs.check_writable(workdir)  # an existing workdir, before any write
  # An earlier attempt's records (looked for before this run writes any).
  used = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  resuming = workdirs.prepare(workdir, config, checkpoint.saved_steps(workdir))
  # Killed before its first complete checkpoint: the same run from step 0.
  restarting = used and not resuming
  splits = load_splits(config.data)
  train_set, test_set = splits["train"], splits["test"]
  task = task_for_run(config, train_set)  # config.task, fitted to train
  mean, std = normalization_stats(config.data, train_set)
  writers.report(f"{config.data.name}: {len(train_set)} train, "
                 f"{len(test_set)} test examples of shape "
                 f"{train_set.example_shape}")

  batch_size = config.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = config.train.num_epochs * per_epoch
  schedule = learning_rate_schedule(config, per_epoch)
  if resuming:
    state, progress = _resume(config, workdir, train_set.example_shape,
                              per_epoch)
  else:
    state, _ = create_train_state(config, jax.random.PRNGKey(config.seed),
                                  train_set.example_shape, per_epoch)
    state = transfer.restore_init_from(state, config.get("transfer"),
                                       writers.report)
    progress = _fresh_progress()
  run_meta = {"config": config.to_dict(),
              "normalization": {"mean": mean.tolist(), "std": std.tolist()}}

  step_fn = functools.partial(train_step, mean=mean, std=std,
                              augment_config=config.data.augment.to_dict(),
                              label_smoothing=config.train.label_smoothing,
                              task=task)
  # N > 1: each call scans over N stacked batches (cnn_jax/training/multistep.py).
  # Calls end at epoch ends, so the last call of an epoch runs
  # steps_per_epoch % N steps: one more compiled shape, rather than padding
  # and masking steps, which would still cost their compute.
  # XLA:CPU runs a step inside a while loop about 1.6x slower than the same
  # step compiled alone (MNIST CNN, batch 256: ~920 vs ~1,500 img/s), so on
  # CPU the scan is unrolled into one loop-free program (compiles longer).
  unroll = True if jax.default_backend() == "cpu" else 1
  p_train_call = jax.jit(
      step_fn if per_call == 1 else multistep.make_multi_step(step_fn, unroll),
      donate_argnums=0)
  p_eval_step = jax.jit(functools.partial(eval_step, mean=mean, std=std,
                                          task=task))

  step = progress["step"]
  position = batching.IteratorPosition(**progress["position"])
  # float32 again (JSON made them float64), for bitwise-equal window means.
  pending = [{k: np.float32(v) for k, v in record.items()}
             for record in progress["pending_metrics"]]
  test_metrics = progress["test_metrics"]
  # The run's first writes (checkpoints/, metrics.jsonl, tensorboard/): a
  # file in the way, no permission, a read-only or full disk is one line.
  with workdirs.writing(workdir):
    workdirs.write_config(workdir, config)  # what a restart is checked against
    unfinished = checkpoint.remove_unfinished(workdir)  # cut short by a kill
    if unfinished:
      writers.report("removed unfinished checkpoint(s): "
                     + ", ".join(unfinished))
    manager = checkpoint.make_manager(workdir, config.checkpoint)
    writer = writers.MetricWriter(
        workdir, purge_step=step + 1 if resuming or restarting else None)
    if resuming or restarting:
      # Supersedes the records logged after `step` (writers.drop_superseded).
      writer.write(step, "resumed", {"epoch": step / per_epoch})
    if resuming:
      writers.report(f"resuming from the checkpoint of step {step} "
                     f"(epoch {position.epoch}, batch {position.batch})")
    if restarting:
      writers.report(f"no complete checkpoint in {workdir}: starting the run "
                     "again from step 0 (the earlier attempt's records stay "
                     "in metrics.jsonl, superseded)")
  bar = writers.progress_bar(total_steps, initial=step)
  log = train_log.TrainLog(writer, bar, schedule, per_epoch,
                           config.train.log_every_steps, pending)
  stop, stopping = preemption.StopRequest(), False
  host_batches = batching.train_batches(train_set, batch_size, config.seed,
                                        position)
  if per_call > 1:
    host_batches = multistep.group_batches(host_batches, per_call)
  # Double-buffered: the next call's batches are drawn and sent while this
  # call runs.
  batches = prefetch.prefetch_to_device(host_batches, size=2)
  try:
    with stop:
      for position, batch in batches:
        if step >= total_steps:
          break
        # After transfer.unfreeze_after_epochs: the unfrozen forward pass.
        # Calls never cross an epoch, so the phase is the same for each of
        # their steps.
        state = transfer.at_step(state, step, config.get("transfer"),
                                 per_epoch)
        state, call_metrics = p_train_call(state, batch)
        count = 1 if per_call == 1 else len(batch["image"])  # [n, B, ...]
        previous, step = step, step + count
        epoch_done = position.batch == 0
        log.add(call_metrics, previous, step, count * batch_size, epoch_done)
        evaluated = epoch_done and (
            position.epoch % config.train.eval_every_epochs == 0
            or step == total_steps)
        if evaluated:
          test_metrics = evaluate(p_eval_step, state, test_set,
                                  config.data.eval_batch_size, task)
          writer.write(step, "test", {**test_metrics, "epoch": position.epoch})
          headline = ("" if task.headline == "accuracy" else
                      f"{task.headline} {test_metrics[task.headline]:.4f} ")
          writers.report(
              f"epoch {position.epoch} step {step}: test {headline}accuracy "
              f"{test_metrics['accuracy']:.4f} loss {test_metrics['loss']:.4f}")
          log.pause()  # evaluation time is not training time
        # Stops, and step-based checkpoints, that fall inside a call happen
        # at its end: the first call boundary at or after the step.
        if previous < config.train.stop_after_steps <= step:
          stop.request()
        # Read once: a signal arriving later is handled after the next call.
        stopping = stop.signum is not None
        if (stopping or step == total_steps or manager.should_save(step)
            or _interval_crossed(previous, step,
                                 config.checkpoint.every_steps)
            or (evaluated and config.checkpoint.keep_best_metric)):
          _save_checkpoint(manager, state, position, log.pending,
                           test_metrics, evaluated, run_meta)
        if stopping:
          break
  except FloatingPointError as e:
    # The last checkpoint predates the NaN (a poisoned state is never saved).
    manager.wait_until_finished()
    workdirs.write_summary(workdir, {
        "status": "diverged",
        "step": e.step if isinstance(e, DivergedError) else step,
        "error": str(e), "last_checkpoint": manager.latest_step(),
        "wall_seconds": time.time() - start_time, "config": config.to_dict()})
    raise
  finally:
    batches.close()
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()

  if stopping:
    workdirs.write_summary(workdir, {
        "status": "preempted", "step": step,
        "signal": signal.Signals(stop.signum).name,
        "wall_seconds": time.time() - start_time, "config": config.to_dict()})
    raise preemption.Preempted(stop.signum, step, workdir)

  visualize.plot_learning_curves(
      writers.drop_superseded(writers.read_metrics(workdir)),
      os.path.join(workdir, "learning_curves.png"))
  summary = {
      "status": "finished",
      "test_accuracy": test_metrics["accuracy"],
      "test_loss": test_metrics["loss"],
      "test_examples": test_metrics["count"],
      # Every metric of the task (config.task), e.g. mean_auroc, mean_iou.
      "task": task.name,
      "test_metrics": test_metrics,
      "steps": step,
      "epochs": config.train.num_epochs,
      "resumed_from_step": (progress["step"] if resuming or restarting
                            else None),
      "wall_seconds": time.time() - start_time,
      "train_img_per_s": log.train_img_per_s,
      "normalization": run_meta["normalization"],
      "device": jax.devices()[0].device_kind,
      "config": config.to_dict(),
  }
  workdirs.write_summary(workdir, summary)
  return summary


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step=None):
  """Evaluates a checkpoint of `workdir` on the whole test split.

  Args:
    config: the run's config (it must match the checkpoint's, as for
      resuming).
    workdir: the run folder.
    step: the checkpoint's step; None: the latest intact one.
  Returns:
    (results dict, path): written to eval.json, or to eval_step<N>.json when
    eval.json exists (an existing result is never overwritten).
  """
  splits = load_splits(config.data)
  train_set, test_set = splits["train"], splits["test"]
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  abstract = abstract_train_state(config, train_set.example_shape, per_epoch)
  check = lambda meta: workdirs.check_resumable(meta["config"], config,
                                                meta.get("step"))
  manager = checkpoint.make_manager(workdir)
  if step is None:
    state, meta = checkpoint.restore_latest(manager, abstract, check)
  else:
    state, meta = checkpoint.restore(manager, abstract, step, check)
  manager.close()
  # The statistics the run normalised with.
  if "normalization" in meta:
    mean = np.asarray(meta["normalization"]["mean"], np.float32)
    std = np.asarray(meta["normalization"]["std"], np.float32)
  else:
    mean, std = normalization_stats(config.data, train_set)
  task = task_for_run(config, train_set)
  p_eval_step = jax.jit(functools.partial(eval_step, mean=mean, std=std,
                                          task=task))
  metrics = evaluate(p_eval_step, state, test_set, config.data.eval_batch_size,
                     task)
  step = int(state.step)
  results = {"step": step, "test_accuracy": metrics["accuracy"],
             "test_loss": metrics["loss"], "test_examples": metrics["count"],
             "task": task.name, "test_metrics": metrics,
             "device": jax.devices()[0].device_kind,
             "config": config.to_dict()}
  path = workdirs.new_result_path(workdir, "eval.json", f"eval_step{step}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return results, path
