"""ResNet-50 on ImageNet (ILSVRC-2012), the standard recipe (Goyal et al.,
2017, "Accurate, Large Minibatch SGD"), with the Grain input pipeline.

Run, with ImageNet in the folder layout train/<wnid>/*.JPEG and
val/<wnid>/*.JPEG (val sorted into class folders):
  python launch.py --config configs/imagenet_resnet50.py \
      --workdir runs/imagenet_resnet50 --config.data.data_dir=/path/to/imagenet

Or from TFDS `imagenet2012` prepared in array-record format (images kept
as the JPEG bytes TFDS stored, decoded by the same Grain workers; no
TensorFlow needed to read it):
  python launch.py --config configs/imagenet_resnet50.py \
      --workdir runs/imagenet_resnet50 --config.data.name=tfds \
      --config.data.data_dir=~/tensorflow_datasets
(data.tfds_name='imagenet2012', train on 'train', evaluate on 'validation';
each record is read when its example is: nothing is scanned at start.)

Recipe: SGD with momentum 0.9 (Nesterov off), learning rate 0.1 x B / 256
with 5 warm-up epochs and a cosine decay, weight decay 1e-4 on kernels only
(not on BatchNorm or biases), label smoothing 0.1, 90 epochs; random-resized
crop (scale 0.08-1, ratio 3/4-4/3) to 224x224 + horizontal flip, decoded and
cropped on the host by Grain worker processes (cnn_jax/data/grain_pipeline.py;
data.workers, default one per core); evaluation on the center 224x224 crop
of the image resized to 256 on its shorter side. bfloat16 compute with
float32 parameters (use --config.model.dtype=float32 on a CPU). Expected
(the literature, this recipe): ~76.5-77% top-1 after 90 epochs.

Not trained here (no ImageNet on these machines); the config runs end to
end on a generated ImageNet-layout folder of JPEGs and on a TFDS
imagenet2012 array-record copy of it (cnn_jax/data/tfds_write.py;
tests/training/test_imagenet_configs.py). Input rate on this machine's
cores: experiments/bench_input.py.
"""

import ml_collections

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet50"
  config.model.num_classes = 1000
  config.model.dtype = "bfloat16"  # float32 parameters

  data = config.data
  # 'image_folder': data_dir holds train/<wnid>/*.JPEG, val/<wnid>/*.JPEG;
  # 'tfds': data_dir is the TFDS data dir (empty: ~/tensorflow_datasets).
  data.name = "image_folder"
  data.data_dir = "~/data/imagenet"
  data.tfds_name = "imagenet2012"
  data.tfds_train_split = "train"
  data.tfds_test_split = "validation"  # TFDS's 'test' has no labels
  data.tfds_val_split = ""
  data.tfds_image_key = "image"
  data.tfds_label_key = "label"
  data.image_size = (224, 224)
  data.channels = 3
  data.batch_size = 256
  data.eval_batch_size = 250
  # ImageNet's channel statistics, in [0, 1] units (not measured: that would
  # decode the whole training set).
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  # The Grain pipeline: files decoded, cropped and flipped in worker
  # processes (JPEGs at reduced size when the crop allows).
  data.pipeline = "grain"
  data.workers = -1  # -1: one per CPU core; 0: threads in this process
  data.prefetch = 2  # batches ready per worker
  data.skip_bad = False  # True: replace unreadable files, counted
  data.random_crop_scale = (0.08, 1.0)
  data.random_crop_ratio = (3 / 4, 4 / 3)
  data.random_flip = True
  data.eval_crop_fraction = 0.875  # resize to 256, center crop 224
  data.num_workers = 0  # evaluation decoding threads; 0: one per core
  data.class_names = ()  # empty: the sorted wnid folders of train/
  data.test_folder = "val"  # evaluated as the test split

  config.optim.name = "momentum"
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.1 * data.batch_size / 256
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 5.0
  config.optim.end_lr_factor = 0.0
  config.optim.weight_decay = 1e-4
  config.optim.decay_norm_and_bias = False  # decay kernels only

  config.train.num_epochs = 90
  config.train.label_smoothing = 0.1
  config.train.log_every_steps = 100
  config.train.eval_every_epochs = 1
  config.checkpoint.every_steps = 0
  config.checkpoint.every_seconds = 1800.0
  return config
