"""`python -m cnn_jax.conv`: builds the native kernels if needed, says
whether conv_impl 'auto' uses the oneDNN convolutions here, the ISA oneDNN
dispatches to, whether ops.max_pool (and the first conv blocks) run
native kernels, which convolutions run as Winograd's, whether dense
layers under bfloat16 matmul precision multiply on oneDNN, and the
verdict on each convolution checked on this machine so far
(onednn_verify)."""

import sys

from cnn_jax.conv import max_pool_native
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_verify
from cnn_jax.conv import winograd


def main():
  reason = onednn_build.unavailable_reason()
  if reason is not None:
    print(f"oneDNN convolutions unavailable: {reason}")
    return 1
  print(f"oneDNN convolutions ready (oneDNN under "
        f"{onednn_build.onednn_root()}); conv_impl 'auto' uses them on the "
        "CPU")
  print(f"oneDNN dispatches to {onednn_build.cpu_isa()} with "
        f"{onednn_verify.threads()} threads; verdicts in "
        f"{onednn_verify.verdict_file()}")
  if max_pool_native.cpu_supported():
    print("max-pooling: native kernels (ops.max_pool's 2-D tiling windows, "
          "float32 and bfloat16; with the bias and ReLU after it, "
          "ops.max_pool_bias_relu)")
    print("first conv blocks (3x3 or 5x5 conv of 1 or 3 channels -> 2x2 "
          "max-pool -> bias -> ReLU): one native kernel each way "
          "(conv_pool_native.py)")
    print(f"float32 3x3 stride-1 convolutions of >= "
          f"{winograd.MIN_CHANNELS} channels on >= {winograd.MIN_SIZE}x"
          f"{winograd.MIN_SIZE} maps, >= {winograd.MIN_ROWS} 4x4 tiles in "
          "the batch: Winograd F(4x4, 3x3) under "
          "conv_impl 'auto' and 'winograd' (winograd.py)")
  else:
    print("max-pooling: XLA's fusions (the native kernels need AVX-512)")
    print("3x3 convolutions: oneDNN's (Winograd's transforms need AVX-512)")
  if onednn_bfloat16.bfloat16_native():
    print("dense layers (bfloat16 matmul precision or dtype): oneDNN's "
          "bfloat16 matmul (layers.Dense, onednn_dense.py)")
  else:
    print("dense layers: XLA's dots (oneDNN's bfloat16 matmul needs bf16 "
          "instructions)")
  verdicts = onednn_verify.verdicts()
  if not verdicts:
    print("no convolution checked yet (each is checked on first use)")
  for key, rejected in sorted(verdicts.items()):
    print(f"  {'in use' if rejected is None else 'XLA   '}  {key}"
          + ("" if rejected is None else f": {rejected}"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
