"""ResNet-18 (CIFAR stem: 3x3 conv, no max-pool) on the bundled CIFAR-10 subset.

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/cifar10_resnet18.py \
      --workdir runs/cifar10_resnet18

11,173,962 parameters (models.MODELS['resnet18_cifar']); SGD with Nesterov
momentum, one-cycle schedule, 4-pixel crop + flip on device. The subset has
only 4000 training images, so accuracy is well below full CIFAR-10's ~95%.
On a 2-core CPU a ResNet-18 step at 32x32 is slow (tens of images/s): use
--config.train.num_epochs to shorten the run, or a GPU. Measured on a 2-core
AMD EPYC Zen 4 (avx512_bf16, no AMX), 5 epochs with
--config.train.num_epochs 5 --config.optim.warmup_epochs 1: 233 s, train
82-98 img/s after the first epoch, test accuracy 27.6%, peak memory 6.2 GB
(its wide 3x3 layers as Winograd's, conv/winograd.py); with every
convolution on oneDNN (CNN_JAX_CONV_IMPL=onednn) 344 s, 61-63 img/s, 30.4%,
4.6 GB. The freed heap is kept between steps (config.train.cpu_malloc), so
the peak stays with the process.
"""

import ml_collections

from configs import cifar10_simple


def get_config():
  config = cifar10_simple.get_config()
  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18_cifar"
  config.model.num_classes = 10
  config.model.dtype = "float32"

  config.optim.name = "nesterov"
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.warmup_epochs = 3.0
  config.train.num_epochs = 30
  return config
