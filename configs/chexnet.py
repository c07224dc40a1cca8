"""CheXNet (Rajpurkar et al., 2017): DenseNet-121 for the 14 findings of NIH
ChestX-ray14, multi-label with class-weighted binary cross-entropy.

Run, with the dataset on disk in its published layout (Data_Entry_2017.csv,
train_val_list.txt, test_list.txt, images/ or images_0*/images/; see
cnn_jax/data/chestxray.py):
  python launch.py --config configs/chexnet.py --workdir runs/chexnet \
      --config.data.data_dir=/path/to/ChestX-ray14
  python launch.py --config configs/chexnet.py --workdir runs/chexnet \
      --config.data.data_dir=/path/to/ChestX-ray14 --mode=heatmap
CheXNet started from ImageNet weights; to do the same, convert torchvision's
densenet121 weights (cnn_jax/transfer/pretrained.py reads .safetensors/.npz/.pth) and
add --config.transfer.init_from=/path/to/densenet121.safetensors
--config.transfer.dont_load='("classifier/.*",)'.

As in the paper: 224x224 RGB inputs normalised with ImageNet's mean and std,
random horizontal flips, DenseNet-121 with a 14-way sigmoid output, loss
weighted per class by the training label frequencies (w_pos = N_neg / N,
w_neg = N_pos / N), Adam (0.9, 0.999) at 1e-3 with batch 16, the learning
rate divided by 10 when the loss stops improving. Two deliberate
differences: the plateau is detected on the training loss averaged over
about one epoch (optax.contrib.reduce_on_plateau sees the loss each step;
train.py evaluates only the test split), and the validation patients
(val_fraction) are held out but not yet used for model selection. Reported
metric: per-class and mean AUROC on the official test list (patient-wise
split). The paper reports a mean AUROC of 0.841 over the 14 classes.

Not trained here: the full data (112,120 images, 45 GB) is not part of this
repository. The loader and one training step are tested on a generated
folder in the same layout (tests/data/test_chestxray.py).
"""

import ml_collections

from configs import mnist
from configs import multidigit
from cnn_jax.data import chestxray
from cnn_jax.transfer import plan as transfer_plan


def get_config():
  config = mnist.get_config()
  multidigit.multilabel_task(config)

  config.model = ml_collections.ConfigDict()
  config.model.name = "densenet121"
  config.model.num_classes = len(chestxray.CLASS_NAMES)
  config.model.dtype = "float32"  # 'bfloat16' on accelerators

  config.data.name = "chestxray14"
  config.data.data_dir = "~/data/ChestX-ray14"
  config.data.image_size = (224, 224)
  config.data.channels = 3  # grayscale X-rays as RGB, for ImageNet weights
  config.data.in_memory = False  # decode each batch's PNGs (17 GB as arrays)
  config.data.cache_dir = ""  # or a folder: decode once into .npy files
  config.data.num_workers = 0  # 0: one decoding thread per CPU core
  config.data.skip_bad = False
  config.data.val_fraction = 0.1  # of the train_val patients
  config.data.batch_size = 16
  config.data.eval_batch_size = 64
  config.data.mean = (0.485, 0.456, 0.406)  # ImageNet, in [0, 1] units
  config.data.std = (0.229, 0.224, 0.225)
  config.data.augment.flip = True

  config.optim.name = "adam"
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"
  config.optim.warmup_epochs = 0.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 0.0
  # Reduce on plateau (cnn_jax/training/optim.py): x0.1 when the training loss,
  # averaged over ~one epoch (77,000 images / 16), stops improving.
  config.optim.plateau_factor = 0.1
  config.optim.plateau_patience = 1
  config.optim.plateau_rtol = 1e-4
  config.optim.plateau_cooldown = 0
  config.optim.plateau_accumulation_steps = 4800

  config.train.num_epochs = 10
  config.train.log_every_steps = 100
  config.train.eval_every_epochs = 1
  config.checkpoint.keep_best_metric = ""
  config.transfer = transfer_plan.default_transfer_config()
  return config
