"""The simple CNN on the bundled CIFAR-10 subset (4000 train / 1000 test).

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/cifar10_simple.py \
      --workdir runs/cifar10_simple

The lecture's simple CNN (conv32-pool-conv64-pool-dense256-dense10, with
batch norm and dropout 0.3) with the classic CIFAR augmentation (4-pixel crop
padding and horizontal flips, on device). Measured: 58.3% test accuracy
(all 1000 test images, loss 1.108) after 30 epochs / 930 steps, 381 s wall on
a 2-core CPU shared with other jobs (train step about 830 img/s when less
busy, so about 2.5 minutes on a free machine).
Only 4000 training images: numbers are not comparable with full CIFAR-10.
For the full dataset point --config.data.data_dir at cifar-10-batches-py/.
"""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.model.use_batchnorm = True
  config.model.dropout_rate = 0.3

  config.data.name = "cifar10"
  config.data.data_dir = ""  # empty: data/cifar10/cifar10_subset.npz
  config.data.eval_batch_size = 500
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True

  config.optim.learning_rate = 3e-3
  config.optim.weight_decay = 5e-4
  config.train.num_epochs = 30
  config.train.log_every_steps = 31  # one epoch of 4000 // 128 steps
  config.train.eval_every_epochs = 5
  return config
