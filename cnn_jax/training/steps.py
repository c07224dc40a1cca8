"""The pure pieces of training, top to bottom like flax/examples' train.py:
create_model -> initialized -> create_train_state -> train_step (train_inputs
+ gradient_step) / eval_step -> evaluate, with the learning-rate schedule and
the normalisation statistics they use. No I/O: training/train.py's loop and
sweeps/sweep_steps.py (which vmaps the same steps) call them.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data import augment
from cnn_jax.data import batching
from cnn_jax.data import channel_stats
from cnn_jax.distributed import multihost
from cnn_jax.models import MODELS
from cnn_jax.tasks import CLASSIFICATION
from cnn_jax.training import optim
from cnn_jax.training.train_state import TrainState
from cnn_jax.transfer import hooks

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


# LLVM's optimisation level 1 instead of XLA's default (3) for the programs
# that initialise a model's variables on the CPU: they run once per run, but
# compiling them was a quarter of a cold start (2-core AMD EPYC Zen 5:
# simple_cnn 2.7 -> 1.2 s, ResNet-18 9.1 -> 2.5 s), and their values are
# bitwise the same (tests/training/test_steps_init.py). Level 0 is not: it
# changes the values.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options():
  """XLA options for the programs that initialise a model's variables:
  INIT_COMPILER_OPTIONS on the CPU; None (XLA's defaults) off the CPU or
  where XLA_FLAGS sets the level itself (the user's choice wins; the test
  suite compiles everything at level 0)."""
  if (jax.default_backend() != "cpu" or "xla_backend_optimization_level"
      in os.environ.get("XLA_FLAGS", "")):
    return None
  return INIT_COMPILER_OPTIONS


def initialized(rng, model, example_shape):
  """Initial (params, batch_stats) for inputs of shape [B, *example_shape]."""
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  # Traced (abstract_train_state's eval_shape): a nested jit, which takes
  # no compiler options, and nothing is compiled anyway.
  options = (None if isinstance(dummy, jax.core.Tracer)
             else init_compiler_options())
  variables = jax.jit(functools.partial(model.init, train=False),
                      compiler_options=options)(
                          {"params": rng, "dropout": rng}, dummy)
  return variables["params"], variables.get("batch_stats", {})


def learning_rate_schedule(config, steps_per_epoch):
  """The learning rate as a function of the step, over the whole run."""
  optim.check_schedule(config.optim, config.train.num_epochs, steps_per_epoch)
  total_steps = config.train.num_epochs * steps_per_epoch
  return optim.make_schedule(config.optim, total_steps, steps_per_epoch)


def create_train_state(config, rng, example_shape, steps_per_epoch):
  """A fresh TrainState and the learning-rate schedule it follows.

  With `config.transfer` on, the optimizer has the plan's frozen and
  per-learning-rate groups and the forward pass its frozen BatchNorm
  (transfer/hooks.py); the loop restores transfer.init_from afterwards.
  """
  model = create_model(config.model)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  transfer = hooks.TransferHooks(config.get("transfer"), steps_per_epoch)
  # The optimizer exists before anything is compiled: it reads the
  # variables only to check a transfer plan's patterns against their paths,
  # and then only their shapes (traced only then: ~0.07 s of a cold start).
  variables = None
  if transfer.active:
    params, batch_stats = jax.eval_shape(
        lambda: initialized(rng, model, example_shape))
    variables = {"params": params, "batch_stats": batch_stats}
  tx, apply_fn = transfer.optimizer_and_apply(
      config.optim, schedule, model.apply, variables)
  params, batch_stats, opt_state = _initial_values(rng, model, example_shape,
                                                   tx)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=opt_state,
                     rng=jax.random.fold_in(rng, 1), apply_fn=apply_fn,
                     tx=tx)
  return state, schedule


def _initial_values(rng, model, example_shape, tx):
  """(params, batch_stats, tx.init(params)) as one compiled program: one
  compile instead of two (the variables', then the optimizer's) saves ~0.35
  s of every cold start (simple_cnn, 2-core AMD EPYC Zen 4: 1.14 -> 0.78
  s). Run eagerly, tx.init's schedule and inject_hyperparams ops would each
  compile on their own (~40 small programs, ~0.8 s)."""
  def values(rng):
    params, batch_stats = initialized(rng, model, example_shape)
    return params, batch_stats, tx.init(params)
  # Traced (abstract_train_state's eval_shape, whose rng may be concrete):
  # a nested jit, which takes no compiler options, and nothing is compiled
  # anyway. An array made now is a tracer exactly then.
  traced = isinstance(jnp.zeros(()), jax.core.Tracer)
  options = None if traced else init_compiler_options()
  return jax.jit(values, compiler_options=options)(rng)


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


def evaluate(eval_fn, state, dataset, batch_size, task=CLASSIFICATION,
             sharding=None):
  """Metrics over every example of `dataset` (the last batch padded+masked).

  sharding: where the batches go (a run's batch sharding, over the devices
  of every process), or None (eval_fn places them). The batch size is then
  rounded up to a multiple of the device count (the extra rows are
  padding), and each process reads only its rows of each batch: the sums
  are global, each example counted once.
  """
  totals, kept = None, []
  for batch in global_eval_batches(dataset, batch_size, sharding):
    sums, examples = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if examples:
      mask = multihost.to_host(batch["mask"])
      kept.append(jax.tree.map(lambda x, m=mask: multihost.to_host(x)[m],
                               examples))
  examples = (jax.tree.map(lambda *xs: np.concatenate(xs), *kept)
              if kept else {})
  return task.finalize(jax.tree.map(multihost.to_host, totals), examples)


def global_eval_batches(dataset, batch_size, sharding=None):
  """batching.eval_batches of `dataset` as global arrays split by `sharding`
  (B along its 'data' axis; None: host batches, the caller places them).

  The batch size is rounded up to a multiple of the parts the batch is
  split into (the extra rows are padding, masked), and each process reads
  only the rows its devices hold (multihost.local_block): every example
  counted once over all processes.
  """
  if sharding is None:
    yield from batching.eval_batches(dataset, batch_size)
    return
  devices = len(sharding.device_set)
  parts = len({(index[0].start, index[0].stop) for index in
               sharding.devices_indices_map((devices,)).values()})
  batch_size = -(-batch_size // parts) * parts
  rows, = multihost.local_block(sharding, (batch_size,),
                                "config.data.eval_batch_size")
  for batch in batching.eval_batches(dataset, batch_size, rows):
    yield multihost.global_array(batch, sharding)


def normalization_stats(data_config, train_set):
  """(mean, std) per channel: from the config, or measured on the train set."""
  if data_config.mean and data_config.std:
    return (np.asarray(data_config.mean, np.float32),
            np.asarray(data_config.std, np.float32))
  return channel_stats(train_set.images)
