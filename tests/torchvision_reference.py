"""torchvision's ResNet, VGG, DenseNet and AlexNet rebuilt from torch.nn only.

This machine's torch is a CPU build and the torchvision wheels available are
CUDA builds that do not import with it, so the pretrained-parity tests use
these copies: the same modules in the same order, hence the same state_dict
keys and shapes and the same forward pass as torchvision.models (v0.2x),
including its weight initialisation. Import only where torch is installed.
"""

import collections

import torch
from torch import nn
import torch.nn.functional as F


def _init_like_torchvision(model):
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      if m.bias is not None:
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.constant_(m.weight, 1)
      nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.constant_(m.bias, 0)
  return model


# --- ResNet (torchvision.models.resnet) ---


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    _init_like_torchvision(self)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                    bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=1000):
  return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes=1000):
  return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


# --- VGG (torchvision.models.vgg) ---

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"]


class VGG(nn.Module):

  def __init__(self, cfg, batch_norm=False, num_classes=1000):
    super().__init__()
    layers, in_channels = [], 3
    for v in cfg:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
        continue
      layers.append(nn.Conv2d(in_channels, v, 3, padding=1))
      if batch_norm:
        layers.append(nn.BatchNorm2d(v))
      layers.append(nn.ReLU(inplace=True))
      in_channels = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes))
    _init_like_torchvision(self)

  def forward(self, x):
    x = torch.flatten(self.avgpool(self.features(x)), 1)
    return self.classifier(x)


def vgg16(num_classes=1000):
  return VGG(_VGG16, False, num_classes)


# --- AlexNet (torchvision.models.alexnet; torch's default init) ---


class AlexNet(nn.Module):

  def __init__(self, num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    x = torch.flatten(self.avgpool(self.features(x)), 1)
    return self.classifier(x)


def alexnet(num_classes=1000):
  return AlexNet(num_classes)


# --- DenseNet (torchvision.models.densenet) ---


class _DenseLayer(nn.Module):

  def __init__(self, num_input_features, growth_rate, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(num_input_features)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1,
                           bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1,
                           bias=False)

  def forward(self, features):
    x = torch.cat(features, 1)
    x = self.conv1(self.relu1(self.norm1(x)))
    return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):

  def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
    super().__init__()
    for i in range(num_layers):
      self.add_module(f"denselayer{i + 1}", _DenseLayer(
          num_input_features + i * growth_rate, growth_rate, bn_size))

  def forward(self, init_features):
    features = [init_features]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):

  def __init__(self, num_input_features, num_output_features):
    super().__init__()
    self.norm = nn.BatchNorm2d(num_input_features)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(num_input_features, num_output_features, 1,
                          bias=False)
    self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):

  def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16),
               num_init_features=64, bn_size=4, num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(collections.OrderedDict([
        ("conv0", nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(3, 2, 1))]))
    num_features = num_init_features
    for i, num_layers in enumerate(block_config):
      self.features.add_module(f"denseblock{i + 1}", _DenseBlock(
          num_layers, num_features, bn_size, growth_rate))
      num_features += num_layers * growth_rate
      if i != len(block_config) - 1:
        self.features.add_module(f"transition{i + 1}", _Transition(
            num_features, num_features // 2))
        num_features //= 2
    self.features.add_module("norm5", nn.BatchNorm2d(num_features))
    self.classifier = nn.Linear(num_features, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.Linear):
        nn.init.constant_(m.bias, 0)

  def forward(self, x):
    out = F.relu(self.features(x), inplace=True)
    out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
    return self.classifier(out)


def densenet121(num_classes=1000):
  return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes)


MODELS = {"resnet18": resnet18, "resnet50": resnet50, "vgg16": vgg16,
          "densenet121": densenet121, "alexnet": alexnet}
