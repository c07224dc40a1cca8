"""Digits 5-9 from few labels, starting from the digits 0-4 network.

The simple CNN pretrained on digits 0-4 (configs/transfer_digits_pretrain.py)
learns digits 5-9 (relabelled 0-4) from 100 or 1,000 labelled images, in one
of three ways, chosen by the config argument:

  scratch             fresh weights, everything trains;
  feature_extraction  pretrained conv/dense layers frozen (BatchNorm too),
                      only the new head trains (a linear probe);
  fine_tune           pretrained layers train at 0.1 x the learning rate,
                      the new head at the full rate.

  python experiments/transfer_digits.py --workdir runs/transfer_digits --only_data
  python launch.py --config configs/transfer_digits.py:fine_tune \
      --workdir runs/transfer_digits/fine_tune_n100 \
      --config.transfer.init_from=runs/transfer_digits/pretrain

Test accuracy is on all 4,861 test images of digits 5-9. 300 steps, well
under a minute a run on a 2-core CPU. experiments/transfer_digits.py runs all
three at 100 and 1,000 images with 3 seeds (mean +- std, %):

  100 images:   scratch 90.7 +- 2.0, feature extraction 85.4 +- 1.2,
                fine-tune 91.4 +- 2.4
  1,000 images: scratch 97.3 +- 0.1, feature extraction 89.0 +- 1.0,
                fine-tune 96.2 +- 1.1
"""

from configs import transfer_digits_pretrain as pretrain

METHODS = ("scratch", "feature_extraction", "fine_tune")


def get_config(method="fine_tune"):
  if method not in METHODS:
    raise ValueError(f"configs/transfer_digits.py:{method} is not one of: "
                     f"{', '.join(METHODS)}")
  config = pretrain.get_config()
  config.data.data_dir = f"{pretrain.DATA_DIR}/digits5-9_n100_seed0.npz"
  config.data.batch_size = 32
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "cosine"
  config.train.num_epochs = 100  # 3 steps an epoch at 100 images
  config.train.eval_every_epochs = 100  # once, at the end
  config.train.log_every_steps = 50
  config.checkpoint.every_steps = 0  # only the final state
  transfer = config.transfer
  if method != "scratch":
    transfer.init_from = "runs/transfer_digits/pretrain"
    transfer.dont_load = ("head/.*",)  # the same shape, other classes
    transfer.mode = method
  if method == "fine_tune":
    transfer.backbone_lr_scale = 0.1
  return config
