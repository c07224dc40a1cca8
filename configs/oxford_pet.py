"""U-Net on the Oxford-IIIT Pet trimaps (TFDS oxford_iiit_pet): background /
pet / border for every pixel, at 128x128.

Needs the dataset prepared once in array-record format (network; TFDS's
builder for this dataset needs no TensorFlow to read afterwards):
  tfds build oxford_iiit_pet --file_format=array_record
Then (from the repository root):
  python launch.py --config configs/oxford_pet.py --workdir runs/oxford_pet
  python launch.py --config configs/oxford_pet.py --workdir runs/oxford_pet \
      --mode=heatmap

Task 'segmentation' (softmax cross-entropy + soft Dice per pixel; mean IoU
and Dice per class). Data: source 'tfds_segmentation'
(cnn_jax/data/tfds_segmentation.py) on the 3,680 'train' / 3,669 'test'
examples, images resized bilinearly and trimaps by nearest neighbour to
128x128; raw trimap values (2, 1, 3) become classes (0 background, 1 pet,
2 border). Model: U-Net, 32 features, depth 4. Not trained here (the data is
not available offline); tests/tasks/test_segmentation.py runs it on
tfds.testing.mock_data.
"""

import ml_collections

from configs import unet_digits


def get_config():
  config = unet_digits.get_config()
  config.model.num_classes = 3
  config.model.features = 32
  config.model.depth = 4

  data = ml_collections.ConfigDict()
  data.name = "tfds_segmentation"
  data.data_dir = ""  # empty: TFDS's default (~/tensorflow_datasets)
  data.tfds_name = "oxford_iiit_pet"
  data.tfds_train_split = "train"
  data.tfds_test_split = "test"
  data.tfds_val_split = ""
  data.tfds_image_key = "image"
  data.tfds_label_key = "label"  # unused here: the labels are the masks
  data.tfds_mask_key = "segmentation_mask"
  data.tfds_mask_values = (2, 1, 3)  # raw trimap value of class 0, 1, 2
  data.tfds_mask_other = -1  # any other value is an error
  data.class_names = ("background", "pet", "border")
  data.image_size = (128, 128)
  data.num_workers = 0
  data.in_memory = True
  data.batch_size = 16
  data.eval_batch_size = 64
  data.val_fraction = 0.0
  data.mean = ()  # measured on the training images
  data.std = ()
  data.augment = config.data.augment  # all off: masks must follow images
  config.data = data

  config.optim.learning_rate = 1e-3
  config.optim.warmup_epochs = 1.0
  config.train.num_epochs = 20
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 5
  return config
