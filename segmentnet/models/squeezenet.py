"""SqueezeNet 1.1 (Iandola et al., 2016) with torchvision's state_dict key layout.

torchvision's squeezenet1_1-b8a52dc0.pth loads into SqueezeNet() as it is (strict):

features    0 conv 3->64 3x3 stride 2 (no padding), 1 ReLU, 2 max-pool 3/2 (rounding up),
            3-4 Fire, 5 max-pool, 6-7 Fire, 8 max-pool, 9-12 Fire; 512 channels at stride 16
classifier  0 dropout, 1 conv 512->1000 1x1, 2 ReLU, 3 global average pool (ImageNet's head)

A Fire module squeezes with a 1x1 convolution, then expands with a 1x1 and a 3x3 convolution side
by side and concatenates them. `width` scales every channel count (64 is the paper's and the file's);
smaller widths are for tests.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

# (squeeze, expand) channels of the eight Fire modules, in units of width/64; "M" a max-pool.
FIRE_LAYERS = [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)]


class Fire(nn.Module):
    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], dim=1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1; forward returns ImageNet logits, `features` alone is what segmentation uses."""

    def __init__(self, num_classes: int = 1000, width: int = 64, in_channels: int = 3):
        super().__init__()
        if width < 4:
            raise ConfigError(f"width must be >= 4, got {width}")

        def scaled(channels: int) -> int:
            return max(1, channels * width // 64)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, scaled(64), 3, stride=2), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, ceil_mode=True)]
        channels = scaled(64)
        for item in FIRE_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            squeeze, expand = item
            fire = Fire(channels, scaled(squeeze), scaled(expand), scaled(expand))
            layers.append(fire)
            channels = fire.out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.classifier[1]:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_1(**options) -> SqueezeNet:
    return SqueezeNet(**options)
