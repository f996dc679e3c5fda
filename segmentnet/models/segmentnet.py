"""SegmentNet: the residual UNet-style FCN this project is built around.

encoder  stem + `depth` stages of residual blocks, each halving the resolution
decoder  per stage: learned 2x upsampling (transposed convolution), concatenation with the
         encoder's skip at that resolution, a residual block
head     1x1 convolution to class logits

Any height and width work: the input is padded up to a multiple of stem_stride * 2**depth and
the logits are cropped back, so they always have the input's size.

stem_stride 2 or 4 makes the network cheap enough for a CPU, as LinkNet (Chaurasia & Culurciello,
2017) does: the stem is a 7x7 stride-2 convolution (and, for 4, a 3x3 stride-2 max pool), so no
layer runs at full resolution, and the logits are upsampled bilinearly to the input's size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError

STEM_STRIDES = (1, 2, 4)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, as in ResNet."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


def residual_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [ResidualBlock(in_channels, out_channels, stride)]
    layers += [ResidualBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad H and W (bottom, right) up to a multiple; returns the padded tensor and (H, W).
    Padded always (by zero pixels where none is needed): a branch on the size would make an ONNX
    export specialise to the size it was traced at."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple)), (h, w)


class SegmentNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, depth: int = 4, blocks: int = 2,
                 in_channels: int = 3, max_width: int = 512, stem_stride: int = 1):
        super().__init__()
        if depth < 1 or width < 1 or blocks < 1:
            raise ConfigError(f"width, depth and blocks must be >= 1 (got {width}, {depth}, {blocks})")
        if stem_stride not in STEM_STRIDES:
            raise ConfigError(f"stem_stride must be one of {STEM_STRIDES}, got {stem_stride}")
        self.depth, self.stem_stride = depth, stem_stride
        channels = [min(width * 2 ** i, max_width) for i in range(depth + 1)]
        if stem_stride == 1:
            entry = [nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)]
        else:
            entry = [nn.Conv2d(in_channels, channels[0], 7, 2, 3, bias=False)]
        entry += [nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        if stem_stride == 4:
            entry.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*entry, ResidualBlock(channels[0], channels[0]))
        self.encoder = nn.ModuleList(
            residual_stage(channels[i], channels[i + 1], blocks, stride=2) for i in range(depth))
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * channels[i], channels[i], 1, bias=False), nn.BatchNorm2d(channels[i]),
                          nn.ReLU(inplace=True), ResidualBlock(channels[i], channels[i]))
            for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, self.stem_stride * 2 ** self.depth)
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for up, fuse in zip(self.upsample, self.decoder):
            y = fuse(torch.cat([up(y), skips.pop()], dim=1))
        logits = self.head(y)
        if self.stem_stride > 1:
            logits = F.interpolate(logits, scale_factor=self.stem_stride, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
