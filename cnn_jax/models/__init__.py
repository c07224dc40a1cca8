"""Model families. `MODELS[name](num_classes=..., ...)` returns a Linen module.

Every module is called as `module.init(rngs, x, train=False)` and
`module.apply(variables, x, train=..., mutable=['batch_stats'])`.
"""

import functools

from cnn_jax.models import alexnet
from cnn_jax.models import centernet
from cnn_jax.models import cnn1d
from cnn_jax.models import cnn3d
from cnn_jax.models import densenet
from cnn_jax.models import lenet
from cnn_jax.models import resnet
from cnn_jax.models import unet
from cnn_jax.models import vgg
from cnn_jax.models.simple_cnn import SimpleCNN

MODELS = {
    "simple_cnn": SimpleCNN,
    "lenet5": lenet.LeNet5,
    "alexnet": alexnet.AlexNet,
    "vgg11": vgg.VGG11,
    "vgg11_bn": vgg.VGG11BN,
    "vgg13": vgg.VGG13,
    "vgg13_bn": vgg.VGG13BN,
    "vgg16": vgg.VGG16,
    "vgg16_bn": vgg.VGG16BN,
    "vgg19": vgg.VGG19,
    "vgg19_bn": vgg.VGG19BN,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    # CIFAR stem (conv3x3/1, no max-pool) for 32x32 images.
    "resnet18_cifar": functools.partial(resnet.ResNet18, small_images=True),
    "densenet121": densenet.DenseNet121,
    "densenet169": densenet.DenseNet169,
    "densenet201": densenet.DenseNet201,
    "unet": unet.UNet,
    "cnn1d": cnn1d.FCN1D,
    "resnet1d": cnn1d.ResNet1D,
    "r3d18": cnn3d.R3D18,
    "c3d_small": cnn3d.C3DSmall,
    # Detector: [B, H, W, C] -> [B, H/4, W/4, K + 4] heat maps + boxes.
    "centernet": centernet.CenterNet,
}
