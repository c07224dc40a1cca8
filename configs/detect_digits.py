"""Detection: 1-4 real MNIST digits on a 64x64 canvas, found by a CenterNet.

Run (from the repository root, bundled MNIST, offline):
  python launch.py --config configs/detect_digits.py --workdir runs/detect
  python experiments/box_predictions.py --workdir runs/detect  # PNG of boxes

models.centernet.CenterNet (a small ResNet + FPN, 343k parameters, heat
maps and boxes at stride 4, 16x16 cells) trained with
cnn_jax/tasks/detection.py (focal loss on the heat maps, L1 on offsets and
sizes); decoding: heat-map peaks, top 20, NMS at IoU 0.5; mAP by
pycocotools. Data: source 'mnist_detection'
(cnn_jax/data/digit_boxes.py on canvas.py), non-overlapping digits, boxes
the tight ink box; train canvases from MNIST train digits, test canvases
from MNIST test digits.

Reaches test mAP@0.5 0.929, mAP@[.5:.95] 0.695 (mAP@0.75 0.852, AR@100
0.749; 82.5% of the 1,000 test canvases read exactly right) in 6 epochs of
6,000 canvases, 22 minutes on a 2-core CPU shared with other jobs (35 img/s).
"""

import ml_collections

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.task = "detection"
  config.detection = ml_collections.ConfigDict()
  config.detection.offset_weight = 1.0
  config.detection.size_weight = 0.1
  config.detection.heatmap_alpha = 0.54
  config.detection.top_k = 20
  config.detection.nms_iou = 0.5
  config.detection.nms_per_class = False
  config.detection.score_threshold = 0.3

  config.model = ml_collections.ConfigDict()
  config.model.name = "centernet"
  config.model.num_classes = 10
  config.model.stage_features = (16, 32, 64, 128)
  config.model.fpn_features = 32
  config.model.head_features = 32
  config.model.dtype = "float32"

  config.data.name = "mnist_detection"
  config.data.data_dir = ""  # empty: MNIST digits from data/mnist
  config.data.num_train = 6000
  config.data.num_test = 1000
  config.data.canvas_size = 64
  config.data.min_digits = 1
  config.data.max_digits = 4
  config.data.allow_overlap = False
  config.data.canvas_seed = 0
  config.data.batch_size = 32
  config.data.eval_batch_size = 250

  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 0.5
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 10.0
  config.train.num_epochs = 6
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 2
  return config
