"""FCN (Wang et al., 2017) on a UCR/UEA time-series set bundled in data/ucr.

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/ucr.py --workdir runs/ucr_gunpoint
  python launch.py --config configs/ucr.py:OSULeaf --workdir runs/ucr_osuleaf
  python launch.py --config configs/ucr.py --workdir runs/ucr_arrowhead \
      --config.data.ucr_name=ArrowHead --config.model.num_classes=3

`configs/ucr.py:<Name>` picks the set and its number of classes (see
UCR_SETS); with --config.data.ucr_name=<Name> set --config.model.num_classes
too. The ResNet-1D of Fawaz et al. is --config.model.name=resnet1d.

The .ts files are read by cnn_jax/data/ucr.py: series float32 [N, T, C],
z-normalised per series and dimension. They need no pixel statistics:
data.mean/std stay empty, so training measures the per-channel mean/std of
the (already z-normalised) train series and normalises with them, which is
close to the identity.

Recipe: Adam(W) at 1e-3, batch min(16, N/10) as Fawaz et al. (2019), but a
warmup-cosine schedule over far fewer epochs than their 2000 (a 2-core CPU;
UCR_SETS gives the epochs per set). GunPoint reaches 100% test accuracy in
100 epochs (300 steps, 82 s on a 2-core CPU shared with other jobs).
experiments/ucr_table.py runs 5 sets x 3 seeds (README: the table).
"""

import ml_collections

from configs import mnist

# name: (classes, batch size, epochs) for the sets bundled in data/ucr.
UCR_SETS = {
    "GunPoint": (2, 16, 100),
    "ItalyPowerDemand": (2, 16, 100),
    "ArrowHead": (3, 16, 150),
    "OSULeaf": (6, 16, 60),
    "BasicMotions": (4, 16, 100),
    "JapaneseVowels": (9, 16, 100),  # variable length: padded
}


def get_config(set_name="GunPoint"):
  if set_name not in UCR_SETS:
    raise ValueError(f"configs/ucr.py:{set_name}: not one of "
                     f"{', '.join(UCR_SETS)}")
  num_classes, batch_size, epochs = UCR_SETS[set_name]
  config = mnist.get_config()
  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn1d"  # FCN1D; or resnet1d
  config.model.num_classes = num_classes
  config.model.dtype = "float32"

  config.data.name = "ucr"
  config.data.data_dir = ""  # empty: the copy bundled in data/ucr
  config.data.ucr_name = set_name
  # 'error': series of different lengths are rejected; 'pad': zero-padded
  # at the end (after z-normalisation) to the longest one.
  config.data.variable_length = ("pad" if set_name == "JapaneseVowels"
                                 else "error")
  config.data.znorm = True
  config.data.batch_size = batch_size
  config.data.eval_batch_size = 256
  config.data.mean = ()  # measured on train (z-normalised: about 0 and 1)
  config.data.std = ()

  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 0.0

  config.train.num_epochs = epochs
  config.train.log_every_steps = 100
  config.train.eval_every_epochs = 50
  config.checkpoint.every_steps = 0
  config.checkpoint.every_seconds = 600
  return config
