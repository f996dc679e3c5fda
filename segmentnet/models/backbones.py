"""ImageNet backbones with torchvision's state_dict key layout, so its published files load as they are.

VGG     `features`: a Sequential of conv(+BN)+ReLU layers and max-pools, indexed as in torchvision
        (vgg16-397923af.pth, vgg19-dcbb9e9d.pth, vgg16_bn-6c64b313.pth). The classifier (fc6, fc7, fc8)
        is not part of the module: FCN keeps fc6/fc7 as convolutions (see fcn.py), others drop it.
ResNet  conv1, bn1, layer1..layer4 of Bottleneck blocks (v1.5: the stride sits in the 3x3 conv), with
        torchvision's replace_stride_with_dilation (resnet50-0676ba61.pth, resnet101-63fe2227.pth);
        avgpool and fc are left out.

`width` scales every channel count (64 is the papers' and the files'); smaller widths are for tests.
"""
from __future__ import annotations

from torch import nn

# Channels per conv layer, "M" a 2x2 max-pool; the five stages end at pool1..pool5.
VGG_LAYERS = {
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
    "vgg19": [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"],
}


class VGG(nn.Module):
    """VGG's convolutional part: 13 (VGG16) or 16 (VGG19) 3x3 convolutions in five stages, each ending in a max-pool."""

    def __init__(self, depth: int = 16, batch_norm: bool = False, width: int = 64, in_channels: int = 3,
                 first_padding: int = 1, ceil_mode: bool = False, return_indices: bool = False):
        super().__init__()
        layers, channels = [], in_channels
        for item in VGG_LAYERS[f"vgg{depth}"]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode, return_indices=return_indices))
                continue
            out = item * width
            # FCN pads the first convolution by 100 so that fc6's 7x7 fits any input (see fcn.py).
            layers.append(nn.Conv2d(channels, out, 3, padding=first_padding if not layers else 1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def pooled_features(self, x) -> list:
        """The outputs of pool1..pool5."""
        pools = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(x)
        return pools

    def forward(self, x):
        return self.features(x)


def vgg16(**options) -> VGG:
    return VGG(16, **options)


def vgg19(**options) -> VGG:
    return VGG(19, **options)


def vgg16_bn(**options) -> VGG:
    return VGG(16, batch_norm=True, **options)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution (no bias, "same" padding), batch norm and ReLU: the building block of the heads."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                        bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


RESNET_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


class ResNet(nn.Module):
    """ResNet-50/101 without avgpool and fc; forward returns layer4's features.

    replace_stride_with_dilation, as in torchvision: for layer2..4, trade the stride 2 for a dilation,
    so (False, True, True) gives output stride 8. The first block of a dilated layer keeps the previous
    dilation, as torchvision does.
    """

    def __init__(self, depth: int = 50, width: int = 64, replace_stride_with_dilation=(False, False, False),
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.channels, self.dilation = width, 1
        blocks = RESNET_BLOCKS[depth]
        self.layer1 = self._make_layer(width, blocks[0])
        self.layer2 = self._make_layer(width * 2, blocks[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(width * 4, blocks[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(width * 8, blocks[3], 2, replace_stride_with_dilation[2])
        self.out_channels = self.channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.channels != out:
            downsample = nn.Sequential(nn.Conv2d(self.channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.channels, planes, stride, previous_dilation, downsample)]
        self.channels = out
        layers += [Bottleneck(out, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def resnet50(**options) -> ResNet:
    return ResNet(50, **options)


def resnet101(**options) -> ResNet:
    return ResNet(101, **options)


BACKBONES = {"vgg16": vgg16, "vgg19": vgg19, "vgg16_bn": vgg16_bn, "resnet50": resnet50, "resnet101": resnet101}
