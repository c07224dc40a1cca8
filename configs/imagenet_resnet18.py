"""ResNet-18 on ImageNet: configs/imagenet_resnet50.py's recipe and input
pipeline with the smaller network (~69.8-71% top-1 after 90 epochs in the
literature; ~2.5x less compute per image than ResNet-50).

Run:
  python launch.py --config configs/imagenet_resnet18.py \
      --workdir runs/imagenet_resnet18 --config.data.data_dir=/path/to/imagenet
From TFDS imagenet2012 (array-record; see imagenet_resnet50.py):
  python launch.py --config configs/imagenet_resnet18.py \
      --workdir runs/imagenet_resnet18 --config.data.name=tfds \
      --config.data.data_dir=~/tensorflow_datasets
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = "resnet18"
  return config
