"""Pneumonia vs normal chest X-rays (PneumoniaMNIST): CheXNet's recipe for its
one finding, on the bundled 28x28 images.

Run (from the repository root, bundled data, offline), then the CAMs:
  python launch.py --config configs/pneumonia.py --workdir runs/pneumonia
  python launch.py --config configs/pneumonia.py --workdir runs/pneumonia \
      --mode=heatmap

Task 'multilabel' with one label (sigmoid output; CheXNet's class weights
w_pos = N_neg / N = 0.26, w_neg = N_pos / N = 0.74 from the training split),
reported as AUROC and accuracy (at probability 0.5) on the 624 test images.
Data: source 'pneumonia', data/pneumonia/pneumoniamnist_reconstructed.npz
(real PneumoniaMNIST with the official splits; see data/README.md), resized
to 32x32 (the DenseNet stem needs >= 32). Model: a small DenseNet (2 dense
blocks of 4 layers, growth 16). For reference, the MedMNIST v2 paper reports
test AUC 0.944 / ACC 0.854 for ResNet-18 at 28x28.
Measured: test AUROC 0.972, accuracy 0.905, F1 0.929 (624 images) after
8 epochs / 584 steps, 327 s on a 2-core CPU shared with other jobs.
"""

from configs import mnist
from configs import multidigit


def get_config():
  config = mnist.get_config()
  multidigit.multilabel_task(config)
  config.model = multidigit.small_densenet(num_classes=1)

  config.data.name = "pneumonia"
  config.data.data_dir = ""  # empty: data/pneumonia
  config.data.image_size = (32, 32)
  config.data.batch_size = 64
  config.data.eval_batch_size = 312

  config.optim.name = "adamw"
  config.optim.learning_rate = 3e-3
  config.optim.schedule = "one_cycle"
  config.optim.warmup_epochs = 1.0
  config.train.num_epochs = 8
  config.train.log_every_steps = 25
  config.train.eval_every_epochs = 2
  return config
