"""MNIST with the lecture's simple CNN (conv32-pool-conv64-pool-dense256-dense10).

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/mnist.py --workdir runs/mnist

Measured on an idle 2-core CPU (oneDNN convolutions, conv_impl 'auto'):
99.30% test accuracy (all 10,000 test images) after 4 epochs / 1,872 steps,
107 s including compilation, 2,735 train img/s, peak RSS 0.96 GB (with XLA's
convolutions: 99.29%, 172 s, 1,591 img/s; configs/mnist_fast.py: 99.42% in
83 s). Override any value from the command line, e.g.
--config.optim.learning_rate=0.003 --config.train.num_epochs=8.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "simple_cnn"
  config.model.num_classes = 10
  config.model.use_batchnorm = False
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"
  config.data.data_dir = ""  # empty: the copy bundled in data/mnist
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.val_fraction = 0.0  # >0: hold out this fraction of train as 'val'
  # Per-channel normalisation in [0, 1] units; empty: measured on train.
  config.data.mean = ()
  config.data.std = ()
  config.data.augment = ml_collections.ConfigDict()
  # On-device augmentation (cnn_jax/data/augment.py), all off for digits.
  config.data.augment.crop_padding = 0  # random translation, in pixels
  config.data.augment.flip = False  # digits must not be mirrored
  config.data.augment.translate = 0.0  # max shift, fraction of H and W
  config.data.augment.resized_crop_min_scale = 0.0  # >0: random resized crop
  config.data.augment.brightness = 0.0  # colour jitter: factor in [1-s, 1+s]
  config.data.augment.contrast = 0.0
  config.data.augment.saturation = 0.0
  config.data.augment.cutout = 0  # side of a zeroed square, in pixels
  config.data.augment.mixup_alpha = 0.0  # >0: mixup (soft targets)
  config.data.augment.cutmix_alpha = 0.0  # >0: cutmix (soft targets)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"
  config.optim.learning_rate = 3e-3
  config.optim.schedule = "one_cycle"
  config.optim.warmup_epochs = 1.0
  config.optim.end_lr_factor = 0.0
  config.optim.momentum = 0.9
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 4
  config.train.label_smoothing = 0.0
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 1
  # Training steps per jitted call (lax.scan over N stacked batches): less
  # Python per step. Calls never cross an epoch; 1: one step per call.
  config.train.steps_per_call = 1
  # >0: after this step, stop as if SIGTERM had arrived (checkpoint, exit
  # status 143); the next launch resumes. For tests and time-boxed jobs.
  config.train.stop_after_steps = 0
  # JAX's persistent compilation cache (training/compilation_cache.py):
  # 'auto' ~/.cache/cnn_jax/jax_compilation (or $CNN_JAX_COMPILATION_CACHE),
  # 'off', or a folder. A repeated or resumed run skips compiling.
  config.train.compilation_cache = "auto"
  # glibc keeps freed memory on a CPU run, so steps stop page-faulting on
  # their temporaries (training/cpu_malloc.py): 'auto', 'keep' or 'default'.
  config.train.cpu_malloc = "auto"
  # What float32 convolutions multiply in (training/matmul_precision.py):
  # '' JAX's default (full float32 on the CPU), 'float32', or 'bfloat16':
  # bfloat16 operands with float32 sums, 1.3x the MNIST CNN's train step on
  # CPUs with bf16 instructions (AVX-512-BF16, AMX; float32 on others).
  config.train.matmul_precision = ""

  # Devices: each global batch is split over them (data parallel), the
  # state replicated; with several processes (launch.py --distributed),
  # over the devices of all of them. README "Many devices and hosts".
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data_devices = -1  # -1: all; n: the first n (one process)

  # Checkpoints in <workdir>/checkpoints; rerunning the same command resumes.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500  # 0: no step-based saves
  config.checkpoint.every_seconds = 600.0  # 0: no time-based saves
  config.checkpoint.keep = 3  # the newest N are kept
  # 'accuracy' or 'loss' of the latest test evaluation: also keep the best
  # checkpoint by it (a checkpoint is then saved after every evaluation).
  config.checkpoint.keep_best_metric = ""  # '': off
  config.checkpoint.async_save = True  # write files while training goes on
  return config
