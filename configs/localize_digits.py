"""Localization: one real MNIST digit on a 64x64 canvas, its class and box.

Run (from the repository root, bundled MNIST, offline):
  python launch.py --config configs/localize_digits.py --workdir runs/localize

The simple CNN (with batch norm, three conv-pool stages) with K + 4 = 14
outputs: 10 class logits and a box (cnn_jax/tasks/localization.py: sigmoid
(cy, cx, h, w), loss CE + 5 L1 + 2 (1 - GIoU)). Data: source
'mnist_localization' (cnn_jax/data/digit_boxes.py on canvas.py), 10,000
train canvases from MNIST train digits, 2,000 test canvases from MNIST test
digits, boxes the tight ink box.

Reaches test mean IoU 0.835 (IoU >= 0.5 for 99.4% of the 2,000 test
canvases) and class accuracy 0.68 in 6 epochs, 33 minutes on a 2-core CPU
shared with other jobs (31 img/s). The class is the weak part: the dense
head must learn each digit at every position; more epochs or data help.
"""

import ml_collections

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.task = "localization"
  config.localization = ml_collections.ConfigDict()
  config.localization.l1_weight = 5.0
  config.localization.giou_weight = 2.0

  config.model.name = "simple_cnn"
  config.model.num_classes = 10 + 4  # 10 digit logits + (cy, cx, h, w)
  config.model.features = (16, 32, 64)
  config.model.hidden = 256
  config.model.use_batchnorm = True

  config.data.name = "mnist_localization"
  config.data.data_dir = ""  # empty: MNIST digits from data/mnist
  config.data.num_train = 10000
  config.data.num_test = 2000
  config.data.canvas_size = 64
  config.data.min_digits = 1
  config.data.max_digits = 1
  config.data.allow_overlap = False
  config.data.canvas_seed = 0
  config.data.batch_size = 128
  config.data.eval_batch_size = 500

  config.optim.learning_rate = 2e-3
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 0.5
  config.train.num_epochs = 6
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 2
  return config
