"""Pretraining for the transfer experiment: the simple CNN on MNIST digits 0-4.

The data is an .npz of the bundled MNIST's digits 0-4 (30,596 train, 5,139
test images) that experiments/transfer_digits.py writes:

  python experiments/transfer_digits.py --workdir runs/transfer_digits --only_data
  python launch.py --config configs/transfer_digits_pretrain.py \
      --workdir runs/transfer_digits/pretrain

(the experiment script runs this itself). Reaches 99.81% test accuracy on
the 5,139 test images of digits 0-4 in 2 epochs (478 steps), a minute or two
on a 2-core CPU.
"""

from cnn_jax.transfer import plan as transfer_plan
from configs import mnist

DATA_DIR = "runs/transfer_digits/data"
# MNIST's pixel statistics, fixed so that the pretraining and every transfer
# run normalise the same way (measured per subset they would differ).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def get_config():
  config = mnist.get_config()
  config.model.num_classes = 5
  config.data.name = "npz"
  config.data.data_dir = f"{DATA_DIR}/digits0-4.npz"
  config.data.mean = MNIST_MEAN
  config.data.std = MNIST_STD
  config.optim.learning_rate = 3e-3
  config.optim.schedule = "one_cycle"
  config.optim.warmup_epochs = 0.5
  config.train.num_epochs = 2
  config.transfer = transfer_plan.default_transfer_config()  # off: trains all
  return config
