"""Training and evaluation: create_model -> create_train_state -> train_step /
eval_step -> train_and_evaluate. Reads top to bottom like flax/examples."""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import checkpoint
from cnn_jax import losses
from cnn_jax import metrics as metrics_lib
from cnn_jax import optim
from cnn_jax import visualize
from cnn_jax import workdirs
from cnn_jax import writers
from cnn_jax.data import augment
from cnn_jax.data import batching
from cnn_jax.data import channel_stats
from cnn_jax.data import load_splits
from cnn_jax.models import MODELS
from cnn_jax.train_state import TrainState

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


def create_train_state(config, rng, example_shape, steps_per_epoch):
  """A fresh TrainState and the learning-rate schedule it follows."""
  model = create_model(config.model)
  params, batch_stats = initialized(rng, model, example_shape)
  total_steps = config.train.num_epochs * steps_per_epoch
  schedule = optim.make_schedule(config.optim, total_steps, steps_per_epoch)
  tx = optim.make_optimizer(config.optim, schedule)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params),
                     rng=jax.random.fold_in(rng, 1), apply_fn=model.apply,
                     tx=tx)
  return state, schedule


def train_step(state, batch, *, mean, std, augment_config=None,
               label_smoothing=0.0):
  """One SGD step on batch {'image': [B,H,W,C] uint8/float, 'label': int [B]}.

  Augmentation and normalisation happen here, on device, with keys derived
  from (state.rng, state.step), so the step is a pure function of its inputs.
  Returns (new_state, {'loss', 'accuracy'}).
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = augment.normalize(batch["image"], mean, std)
  images = augment.augment_batch(images, augment_key, augment_config)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    loss = jnp.mean(losses.softmax_cross_entropy(
        logits, batch["label"], label_smoothing))
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state.apply_gradients(grads, batch_stats), {"loss": loss,
                                                     "accuracy": accuracy}


def eval_step(state, batch, *, mean, std):
  """Summed metrics over the unmasked examples of a (padded) batch."""
  images = augment.normalize(batch["image"], mean, std)
  logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, images,
      train=False)
  return metrics_lib.classification_sums(logits, batch["label"], batch["mask"])


def evaluate(eval_fn, state, dataset, batch_size):
  """Metrics over every example of `dataset` (the last batch padded+masked)."""
  totals = None
  for batch in batching.eval_batches(dataset, batch_size):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return metrics_lib.finalize(jax.device_get(totals))


def normalization_stats(data_config, train_set):
  """(mean, std) per channel: from the config, or measured on the train set."""
  if data_config.mean and data_config.std:
    return (np.asarray(data_config.mean, np.float32),
            np.asarray(data_config.std, np.float32))
  return channel_stats(train_set.images)


def _check_finite(records, first_step):
  for offset, record in enumerate(records):
    if not np.isfinite(record["loss"]):
      step = first_step + offset + 1
      raise FloatingPointError(
          f"training diverged: non-finite loss ({record['loss']}) at step "
          f"{step}; lower config.optim.learning_rate or add "
          "config.optim.grad_clip_norm")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains config.model on config.data, writing logs, curves, a checkpoint
  and summary.json into `workdir`. Returns the summary dict."""
  start_time = time.time()
  workdirs.prepare(workdir, config)
  splits = load_splits(config.data)
  train_set, test_set = splits["train"], splits["test"]
  mean, std = normalization_stats(config.data, train_set)
  writers.report(f"{config.data.name}: {len(train_set)} train, "
                 f"{len(test_set)} test examples of shape "
                 f"{train_set.example_shape}")

  batch_size = config.data.batch_size
  per_epoch = batching.steps_per_epoch(len(train_set), batch_size)
  total_steps = config.train.num_epochs * per_epoch
  rng = jax.random.PRNGKey(config.seed)
  state, schedule = create_train_state(config, rng, train_set.example_shape,
                                       per_epoch)

  p_train_step = jax.jit(
      functools.partial(train_step, mean=mean, std=std,
                        augment_config=config.data.augment.to_dict(),
                        label_smoothing=config.train.label_smoothing),
      donate_argnums=0)
  p_eval_step = jax.jit(functools.partial(eval_step, mean=mean, std=std))

  writer = writers.MetricWriter(workdir)
  bar = writers.progress_bar(total_steps)
  pending, pending_from = [], 0
  window_start, window_images = time.time(), 0
  train_seconds, train_images = 0.0, 0
  step = 0
  batches = batching.train_batches(train_set, batch_size, config.seed)
  for position, batch in batches:
    if step >= total_steps:
      break
    state, step_metrics = p_train_step(state, batch)
    pending.append(step_metrics)
    step += 1
    window_images += batch_size
    epoch_done = position.batch == 0
    if step % config.train.log_every_steps == 0 or epoch_done:
      records = jax.device_get(pending)
      _check_finite(records, pending_from)
      elapsed = time.time() - window_start
      throughput = window_images / max(elapsed, 1e-9)
      if pending_from > 0:  # the first window holds the compilation
        train_seconds += elapsed
        train_images += window_images
      summary = {k: float(np.mean([r[k] for r in records])) for k in records[0]}
      summary.update(learning_rate=float(schedule(step - 1)),
                     img_per_s=throughput, epoch=step / per_epoch)
      writer.write(step, "train", summary)
      bar.set_postfix(epoch=f"{step / per_epoch:.2f}",
                      loss=f"{summary['loss']:.4f}",
                      img_s=f"{throughput:.0f}")
      bar.update(len(records))
      pending, pending_from = [], step
      window_start, window_images = time.time(), 0
    if epoch_done and (position.epoch % config.train.eval_every_epochs == 0
                       or step == total_steps):
      test_metrics = evaluate(p_eval_step, state, test_set,
                              config.data.eval_batch_size)
      writer.write(step, "test", {**test_metrics, "epoch": position.epoch})
      writers.report(
          f"epoch {position.epoch} step {step}: test accuracy "
          f"{test_metrics['accuracy']:.4f} loss {test_metrics['loss']:.4f}")
      window_start = time.time()  # evaluation time is not training time
  bar.close()

  manager = checkpoint.make_manager(workdir)
  checkpoint.save(manager, state, {"epoch": total_steps // per_epoch,
                                   "batch": 0, "config": config.to_dict()})
  manager.close()
  writer.close()
  visualize.plot_learning_curves(writers.read_metrics(workdir),
                                 os.path.join(workdir, "learning_curves.png"))
  summary = {
      "status": "finished",
      "test_accuracy": test_metrics["accuracy"],
      "test_loss": test_metrics["loss"],
      "test_examples": test_metrics["count"],
      "steps": step,
      "epochs": config.train.num_epochs,
      "wall_seconds": time.time() - start_time,
      "train_img_per_s": train_images / train_seconds if train_seconds else None,
      "normalization": {"mean": mean.tolist(), "std": std.tolist()},
      "device": jax.devices()[0].device_kind,
      "config": config.to_dict(),
  }
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary
