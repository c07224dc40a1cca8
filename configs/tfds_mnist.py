"""MNIST read from TFDS array-record files (no TensorFlow at run time).

Prepare once (needs network; `tfds build` needs tensorflow for most datasets):
  tfds build mnist --data_dir=~/tensorflow_datasets --file_format=array_record
Run:
  python launch.py --config configs/tfds_mnist.py --workdir runs/tfds_mnist \
      --config.data.data_dir=~/tensorflow_datasets

Same model and schedule as configs/mnist.py on the same images, only the
source differs, so expect what that config reaches (not measured here: no
prepared TFDS data offline; the tests run it on tfds.testing.mock_data).
Another prepared image-classification dataset:
  --config.data.tfds_name=cifar10 --config.model.use_batchnorm=True
"""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.name = "tfds"
  config.data.tfds_name = "mnist"
  config.data.data_dir = ""  # empty: TFDS's default (~/tensorflow_datasets)
  config.data.tfds_train_split = "train"
  config.data.tfds_test_split = "test"
  config.data.tfds_val_split = ""  # a TFDS split name, e.g. 'validation'
  config.data.tfds_image_key = "image"
  config.data.tfds_label_key = "label"
  config.data.num_workers = 0  # reading threads; 0: one per CPU core
  config.data.in_memory = True  # False: read each batch's records when drawn
  return config
