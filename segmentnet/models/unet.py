"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015), with same-padding convolutions and batch norm.

encoder  a double 3x3 conv at width 64, then 4 times: 2x2 max-pool and a double conv doubling the
         channels (64, 128, 256, 512, 1024)
decoder  4 times: a 2x2 transposed convolution halving the channels, concatenation with the encoder's
         map at that resolution, a double conv
head     1x1 convolution to class logits

The paper's valid convolutions shrink the output and need overlap-tiling; with same padding the input
is padded to a multiple of 16 and the logits cropped back, so they have the input's size.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import conv_bn
from .segmentnet import pad_to_multiple


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, out_channels, 3), *conv_bn(out_channels, out_channels, 3))


class UNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 64, depth: int = 4, in_channels: int = 3):
        super().__init__()
        channels = [width * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.inc = double_conv(in_channels, channels[0])
        self.down = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double_conv(channels[i], channels[i + 1]))
                                  for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.fuse = nn.ModuleList(double_conv(2 * channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, 2 ** self.depth)
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            y = fuse(torch.cat([skips.pop(), up(y)], dim=1))
        return self.head(y)[..., :h, :w]
