#!/usr/bin/env bash
# Every GPU acceptance check of the project, as one prepared script for a
# short lease on a GPU machine (about 8 minutes on an H100/H200):
#   1. experiments/bench_gpu.py      ResNet-50 224px bf16 and CIFAR ResNet-18
#                                    train steps vs PyTorch (issue 12);
#   2. configs/cifar10_resnet18.py   trained end to end: test accuracy and
#                                    img/s (issue 5);
#   3. experiments/bench_sweep.py    K=8 sweep in one program vs 8 single
#                                    runs (issue 7).
# Usage: OUT=/some/dir bash experiments/gpu_checks.sh
# Machines whose image lacks ml-collections or tensorboardX: put their
# (pure-Python) wheels in .wheels/ first; they are imported from the zip:
#   pip download --no-deps -d .wheels ml-collections tensorboardX
# SKIP=bench_gpu,cifar,sweep skips steps already measured.
set -u
OUT=${OUT:-/tmp/gpu_checks}
SKIP=${SKIP:-}
mkdir -p "$OUT"
for wheel in .wheels/*-py3-none-any.whl; do
  [ -e "$wheel" ] && export PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
done
# tensorboardX needs protobuf; a pure-Python wheel where the image has none.
if ! python -c "import google.protobuf" 2>/dev/null; then
  for wheel in .wheels/fallback/protobuf-*-py3-none-any.whl; do
    [ -e "$wheel" ] && export PYTHONPATH="$PWD/$wheel:$PYTHONPATH"
  done
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/versions.txt"

if [[ $SKIP != *bench_gpu* ]]; then
  timeout 250 python experiments/bench_gpu.py --rounds 3 --window 1.5 \
    2>&1 | tee "$OUT/bench_gpu.txt" | grep -v "^W0000\|^I0000"
fi

if [[ $SKIP != *cifar* ]]; then
  rm -rf /tmp/r18
  timeout 200 python launch.py --config configs/cifar10_resnet18.py \
    --workdir /tmp/r18 > "$OUT/cifar10_resnet18.txt" 2>&1
  tail -5 "$OUT/cifar10_resnet18.txt"
  cp /tmp/r18/summary.json /tmp/r18/metrics.jsonl "$OUT/" 2>/dev/null
  cat /tmp/r18/summary.json 2>/dev/null; echo
fi

# With the host input pipeline (what a sweep run does), then with batches
# resident on the device (the steps alone).
if [[ $SKIP != *sweep* ]]; then
  timeout 100 python experiments/bench_sweep.py --steps 40 --rounds 2 \
    --vmap_width auto,1 2>&1 | tee "$OUT/bench_sweep.txt" | tail -6
  timeout 100 python experiments/bench_sweep.py --steps 100 --rounds 2 \
    --vmap_width auto,1 --resident 8 2>&1 \
    | tee "$OUT/bench_sweep_resident.txt" | tail -6
fi
