"""Prints a model's per-layer table and parameter count; nothing is computed.

  python -m cnn_jax.models resnet18
  python -m cnn_jax.models vgg16_bn --num_classes 10 --input_shape 64,64,3
  python -m cnn_jax.models r3d18 --depth 1

ResNet-18 at its defaults (1000 classes, 224x224x3) ends with
"Total params: 11,689,512", torchvision's count.
"""

import argparse
from typing import Optional, Sequence

from cnn_jax.models import MODELS
from cnn_jax.models import summary

# Input shape without the batch axis where a model is not an ImageNet one.
DEFAULT_INPUT_SHAPES = {
    "simple_cnn": (28, 28, 1),
    "lenet5": (32, 32, 1),
    "resnet18_cifar": (32, 32, 3),
    "unet": (256, 256, 3),
    "cnn1d": (128, 1),
    "resnet1d": (128, 1),
    "r3d18": (16, 112, 112, 3),
    "c3d_small": (16, 112, 112, 3),
}
IMAGENET_INPUT_SHAPE = (224, 224, 3)


def _shape(text: str):
  try:
    return tuple(int(n) for n in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--input_shape={text!r} is not comma-separated ints such as 224,224,3")


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m cnn_jax.models", description=__doc__.splitlines()[0])
  parser.add_argument("name", choices=list(MODELS))
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: the model's own (1000 for ImageNet nets)")
  parser.add_argument("--input_shape", type=_shape, default=None,
                      help="without the batch axis, e.g. 224,224,3 or 128,1")
  parser.add_argument("--depth", type=int, default=None,
                      help="show modules nested at most this deep")
  args = parser.parse_args(argv)

  kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
  model = MODELS[args.name](**kwargs)
  input_shape = args.input_shape or DEFAULT_INPUT_SHAPES.get(
      args.name, IMAGENET_INPUT_SHAPE)
  try:
    table = summary.summarize(model, input_shape, max_depth=args.depth)
  except ValueError as e:  # a bad --input_shape; the model names what it needs
    parser.error(str(e))
  print(f"{args.name}: {getattr(model, 'display_name', type(model).__name__)}")
  print(table)
  print()
  print(summary.parameter_efficiency_text())


if __name__ == "__main__":
  main()
