"""MNIST: six simple CNNs trained at once in one vmapped program (3 learning
rates x 2 seeds of configs/mnist.py).

Run (from the repository root, bundled data, offline):
  python launch.py --config configs/mnist_sweep.py --workdir runs/mnist_sweep

Writes runs/mnist_sweep/summary.md (members ranked by test accuracy, on all
10,000 test images), summary.json, metrics.jsonl (every member, with a
'member' field) and members/<k>/, each an ordinary run folder (summary.json
with the member's resolved config, metrics.jsonl, tensorboard/,
checkpoints/). Evaluate member k as the single run it stands for:
  python launch.py --config configs/mnist_sweep.py --mode=evaluate \
      --workdir runs/mnist_sweep/members/<k>

Axes are config keys, nested as in the config; override them from the
command line, e.g. --config.sweep.axes.seed="(0,1,2)". Members may differ in
cnn_jax/sweeps/sweep_config.py's VARYING keys (seed, optimizer hyperparameters, dropout
rate, label smoothing, data.augment.*); `sweep.chunk` bounds how many train
at once (memory).

Measured (all 10,000 test images, 2 epochs = 936 steps per member): test
accuracy 98.93-99.24% over the six members, best member 3 (learning rate
3e-3, seed 1) 99.24%; 1605 s wall for all six on a 2-core CPU shared with
other jobs (load 7-14, run at nice 10; 534 training img/s for the six
together, compilation of the six-member program included in the wall time).
experiments/bench_sweep.py (8 members, training img/s of the sweep over that
of the same 8 runs one after another, in one process): 1.21-1.24x on the idle
2-core CPU (members unrolled in one program: XLA runs two members' ops at
once on the two cores); 4.0-5.3x on an NVIDIA H200 (one vmap, im2col
convolutions; 0.97M img/s).
"""

import ml_collections

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.train.num_epochs = 2

  config.sweep = ml_collections.ConfigDict()
  config.sweep.axes = ml_collections.ConfigDict()
  config.sweep.axes.optim = ml_collections.ConfigDict(
      {"learning_rate": (1e-3, 3e-3, 1e-2)})
  config.sweep.axes.seed = (0, 1)
  config.sweep.mode = "grid"  # 'grid': every combination; 'zip': i-th values
  config.sweep.chunk = 0  # members trained at once; 0: all of them
  config.sweep.member_devices = 1  # >1: members split over devices too
  # Members per vmap; groups follow one another in the same program.
  # 0: auto (the whole chunk on GPU/TPU; 1 on CPU, where vmapped
  # convolutions are slower than unbatched ones).
  config.sweep.vmap_width = 0
  # Convolutions of the sweep's train step: 'auto' is 'im2col' where members
  # share a vmap on GPU/TPU (batched matrix multiplies, 1.9x faster there
  # than vmapped convolutions), else what single runs use.
  config.sweep.conv_impl = "auto"
  return config
