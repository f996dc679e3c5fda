"""Decoders for any encoder: U-Net, FPN, DeepLabV3, DeepLabV3+ and FCN.

A decoder takes the encoder's stage outputs (shallow to deep, with their `channels` and `strides`)
and returns a map of `head_channels` channels, which the composition (compose.py) classifies with a
1x1 convolution and upsamples to the input's size. DeepLab's ASPP and the FCN head are torchvision's
own modules (torchvision.models.segmentation), so their state_dict keys are torchvision's.

unet           Ronneberger, Fischer & Brox, MICCAI 2015, on an encoder as segmentation_models.pytorch
               builds it: from the deepest stage, per shallower stage a 2x nearest upsampling,
               concatenation with that stage's output and two 3x3 conv-BN-ReLU; then, if the first
               stage has stride 2, one more such block without a skip (channels 256, 128, 64, 32, 16)
fpn            the semantic-segmentation branch of Panoptic FPN (Kirillov, Girshick, He & Dollar, CVPR
               2019) on a feature pyramid (Lin et al., CVPR 2017): 1x1 laterals to 256 channels and a
               top-down pathway over the stages of stride >= 4, each level brought to stride 4 by 3x3
               conv-GroupNorm-ReLU-2x upsampling steps (128 channels), summed
deeplabv3      Chen, Papandreou, Schroff & Adam, 2017: ASPP (rates 12, 24, 36 at output stride 8; 6, 12,
               18 at 16) and a 3x3 conv-BN-ReLU on the deepest stage (torchvision's DeepLabHead)
deeplabv3plus  Chen, Zhu, Papandreou, Schroff & Adam, ECCV 2018: ASPP on the deepest stage (output stride
               16), upsampled to stride 4 and concatenated with the stride-4 stage reduced to 48
               channels, two 3x3 conv-BN-ReLU (256)
fcn            Long, Shelhamer & Darrell, CVPR 2015, as torchvision's FCNHead: a 3x3 conv-BN-ReLU to a
               quarter of the channels and dropout 0.1 on the deepest stage
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead


def upsample_to(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resized to `size`, also when it has that size already (then an exact copy): a branch on the size
    would make an ONNX export specialise to the size it was traced at."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution (no bias, "same" padding), batch norm and ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                        bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def without_last(head: nn.Sequential) -> tuple[nn.Sequential, nn.Module]:
    """A torchvision head split into (its layers but the classifying convolution, that convolution)."""
    layers = list(head)
    return nn.Sequential(*layers[:-1]), layers[-1]


class Decoder(nn.Module):
    """What the composition needs of a decoder besides forward(features).

    head_channels: channels of the map forward returns, classified by the composition's 1x1 head;
                   None when the decoder returns class scores itself (the seeds' FCN-Ns, SegNet, hypercolumns)
    pad_multiple:  the input is padded to a multiple of this (SegNet's pooling indices), then cropped back
    own_init:      the decoder initialises its weights itself (otherwise: He initialisation)
    unpools_at_maxima: the decoder puts values where the encoder's pools found their maxima (SegNet), so
                   its output jumps where two maxima nearly tie (an export is verified accordingly)
    """

    head_channels: int | None = None
    pad_multiple: int = 1
    own_init: bool = False
    unpools_at_maxima: bool = False

    def features(self, encoder, x):
        """The encoder's output as this decoder wants it (the default: every stage's output)."""
        return encoder(x)


class UNetDecoder(Decoder):
    def __init__(self, channels: list[int], strides: list[int], num_classes: int):
        super().__init__()
        skips = list(reversed(channels[:-1]))
        blocks = len(skips) + (1 if strides[0] > 1 else 0)
        widths = [max(16, 256 >> i) for i in range(blocks)]
        inputs = [channels[-1]] + widths[:-1]
        self.blocks = nn.ModuleList(
            nn.Sequential(conv_bn(inputs[i] + (skips[i] if i < len(skips) else 0), widths[i], 3),
                          conv_bn(widths[i], widths[i], 3)) for i in range(blocks))
        self.head_channels = widths[-1]

    def forward(self, features):
        skips = list(reversed(features[:-1]))
        y = features[-1]
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                y = torch.cat([upsample_to(y, skips[i].shape[-2:], "nearest"), skips[i]], dim=1)
            else:
                y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = block(y)
        return y


class FPNDecoder(Decoder):
    def __init__(self, channels: list[int], strides: list[int], num_classes: int, pyramid: int = 256,
                 segmentation: int = 128):
        super().__init__()
        self.levels = [i for i, s in enumerate(strides) if s >= 4]
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], pyramid, 1) for i in self.levels)
        self.branches = nn.ModuleList()
        for i in self.levels:
            steps = max(1, (strides[i] // 4).bit_length() - 1)  # 3x3 convs; stride 4 still gets one
            layers = []
            for step in range(steps):
                layers += [nn.Conv2d(pyramid if step == 0 else segmentation, segmentation, 3, padding=1, bias=False),
                           nn.GroupNorm(32, segmentation), nn.ReLU(inplace=True)]
            self.branches.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(0.2)
        self.head_channels = segmentation

    def forward(self, features):
        maps = [features[i] for i in self.levels]
        pyramid = [self.lateral[-1](maps[-1])]
        for lateral, x in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            pyramid.insert(0, lateral(x) + upsample_to(pyramid[0], x.shape[-2:], "nearest"))
        size = pyramid[0].shape[-2:]
        total = sum(upsample_to(branch(p), size) for branch, p in zip(self.branches, pyramid))
        return self.dropout(total)


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab's atrous rates: (6, 12, 18) at output stride 16, doubled at 8, halved at 32."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


class DeepLabV3Decoder(Decoder):
    def __init__(self, channels: list[int], strides: list[int], num_classes: int):
        super().__init__()
        layers, _ = without_last(DeepLabHead(channels[-1], num_classes, aspp_rates(strides[-1])))
        self.layers = layers
        self.head_channels = 256

    def forward(self, features):
        return self.layers(features[-1])


class DeepLabV3PlusDecoder(Decoder):
    def __init__(self, channels: list[int], strides: list[int], num_classes: int):
        super().__init__()
        self.low = next(i for i, s in enumerate(strides) if s >= 4)
        self.aspp = ASPP(channels[-1], list(aspp_rates(strides[-1])), 256)
        self.reduce = conv_bn(channels[self.low], 48, 1)
        self.fuse = nn.Sequential(conv_bn(256 + 48, 256, 3), conv_bn(256, 256, 3))
        self.head_channels = 256

    def forward(self, features):
        low = self.reduce(features[self.low])
        y = upsample_to(self.aspp(features[-1]), low.shape[-2:])
        return self.fuse(torch.cat([y, low], dim=1))


class FCNDecoder(Decoder):
    def __init__(self, channels: list[int], strides: list[int], num_classes: int):
        super().__init__()
        self.layers, _ = without_last(FCNHead(channels[-1], num_classes))
        self.head_channels = channels[-1] // 4

    def forward(self, features):
        return self.layers(features[-1])


def aux_head(channels: int, num_classes: int) -> nn.Module:
    """torchvision's auxiliary classifier: an FCN head on the second-deepest stage."""
    return FCNHead(channels, num_classes)
