#!/usr/bin/env bash
# Every GPU acceptance check of the project, as one prepared script for a
# short lease on a GPU machine (about 12 minutes on an H200 in all; SKIP
# picks what one lease measures):
#   1. experiments/bench_gpu.py      ResNet-50 224px bf16 and CIFAR ResNet-18
#                                    train steps vs PyTorch eager and
#                                    torch.compile (issues 12, 21);
#                                    BENCH_GPU_ARGS adds or narrows flags;
#   2. configs/cifar10_resnet18.py   trained end to end: test accuracy and
#                                    img/s (issue 5);
#   3. experiments/bench_sweep.py    K=8 sweep in one program vs 8 single
#                                    runs (issue 7);
#   4. experiments/bench_tta.py      MNIST time to 99.4%/99.5% on the GPU,
#                                    cnn_jax vs PyTorch (issue 21); TTA_SEEDS
#                                    seeds (default 3); TTA_XLA_FLAGS: more
#                                    cnn_jax rows under other XLA_FLAGS
#                                    (';'-separated), e.g. how long XLA's
#                                    autotuning takes (41 of the 45 s before
#                                    the first epoch on an H200, session 18):
#                                    "--xla_gpu_autotune_level=0;
#                                    --xla_gpu_autotune_level=1;
#                                    --xla_gpu_enable_triton_gemm=false".
# Usage: OUT=/some/dir bash experiments/gpu_checks.sh
# The device machine's python with JAX and PyTorch is the venv's, first on
# the PATH: PATH=/opt/torch/.venv/bin:$PATH (a symbolic link to it named
# python elsewhere starts Python without the venv's packages).
# Machines whose image lacks ml-collections or tensorboardX: put their
# (pure-Python) wheels in .wheels/ first; they are imported from the zip:
#   pip download --no-deps -d .wheels ml-collections tensorboardX
# SKIP=bench_gpu,cifar,sweep,tta skips steps already measured.
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
  # JAX and PyTorch share the GPU in this one process: JAX takes 60%.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout 330 python \
    experiments/bench_gpu.py --rounds 3 --window 1.5 ${BENCH_GPU_ARGS:-} \
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

# Each run a process of its own, one after another (bench_tta.py); the
# allocator setting --torch_malloc keep is for CPUs.
if [[ $SKIP != *tta* ]]; then
  timeout 240 python experiments/bench_tta.py --seeds "${TTA_SEEDS:-3}" \
    --torch_malloc default --jax_xla_flags="${TTA_XLA_FLAGS:-}" 2>&1 \
    | tee "$OUT/bench_tta.txt" | grep -v "^W0000\|^I0000"
fi
