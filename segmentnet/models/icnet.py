"""ICNet (Zhao, Qi, Shen, Shi and Jia, ECCV 2018): real-time segmentation from an image cascade.

sub1    the full-resolution image through three strided 3x3 conv-BN-ReLU layers (32, 32, 64 channels) -> 1/8
sub2    the half-resolution image through the shared ResNet-50 up to the first block of layer2
        (PSPNet's conv3_1) -> 1/16 of the input
sub4    those features halved again (as the released ICNet does, sharing sub2's computation), the rest of
        layer2 and the dilated layer3/layer4 -> 1/32; pyramid pooling (bins 1, 2, 3, 6, summed with the
        map, as ICNet does) and a 1x1 conv-BN-ReLU to 256 channels
CFF     cascade feature fusion: the coarser map upsampled 2x through a 3x3 dilation-2 conv-BN, the finer
        map through a 1x1 conv-BN, summed, ReLU -> 128 channels. sub4+sub2 at 1/16, then +sub1 at 1/8
head    2x upsampling to 1/4, a 1x1 conv to class logits, bilinearly upsampled to the input's size

Cascade label guidance: in training each CFF also classifies its upsampled coarse input (1x1 conv), and
the model returns {"out", "sub24", "sub4"} with aux_weights {"sub24": 0.4, "sub4": 0.4}; "out" weighs 1,
the paper's lambda = (0.4, 0.4, 1). The paper scores each output against labels downsampled to its size
(1/16, 1/8, 1/4); SegmentNet's training loop instead upsamples the auxiliary logits to the label size,
which keeps every labelled pixel (thin objects and ignore borders survive) with the same weights.

A decoder of the composition (compose.py) over torchvision's ResNet-50 with layer3 and layer4 dilated
(output stride 8), which runs the encoder's layers itself for the cascade; the composition's 1x1 head
classifies its 1/4 map. Head widths are the paper's before pruning (sub1 32, 32, 64; 256 after pyramid
pooling; CFF 128); the paper reaches its speed by then pruning every layer's kernels by half.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compose import SegmentationModel, check_pair
from .decoders import Decoder, conv_bn, upsample_to
from .encoders import build_encoder
from .pretrained import WeightsSpec

FITS = ("resnet50", "resnet101")
PYRAMID_BINS = (1, 2, 3, 6)
LABEL_GUIDANCE_WEIGHTS = {"sub24": 0.4, "sub4": 0.4}
WIDTH = 64


def half_size(x):
    return (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """F.adaptive_avg_pool2d(x, bins) as means over slices (the same windows: rows floor(i*H/bins) to
    ceil((i+1)*H/bins), and so for columns), which an ONNX export keeps for every input size; the
    exporter's own form of adaptive pooling holds only at the size it was traced at."""
    for dim in (-2, -1):
        size = x.shape[dim]
        starts = [i * size // bins for i in range(bins)]
        ends = [((i + 1) * size + bins - 1) // bins for i in range(bins)]  # (ceil on non-negative numbers only)
        x = torch.cat([x.narrow(dim, start, end - start).mean(dim, keepdim=True)
                       for start, end in zip(starts, ends)], dim)
    return x


class PyramidPoolingSum(nn.Module):
    """Average pools over 1x1, 2x2, 3x3 and 6x6 bins, upsampled and added to the map (no weights)."""

    def forward(self, x):
        size = x.shape[-2:]
        return x + sum(upsample_to(adaptive_avg_pool(x, bins), size) for bins in PYRAMID_BINS)


class CascadeFeatureFusion(nn.Module):
    def __init__(self, coarse_channels: int, fine_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        self.coarse = conv_bn(coarse_channels, out_channels, 3, dilation=2, relu=False)
        self.fine = conv_bn(fine_channels, out_channels, 1, relu=False)
        self.classifier = nn.Conv2d(coarse_channels, num_classes, 1)  # label guidance on the coarse branch

    def forward(self, coarse, fine, guidance: bool):
        coarse = upsample_to(coarse, fine.shape[-2:])
        fused = F.relu(self.coarse(coarse) + self.fine(fine), inplace=True)
        return fused, (self.classifier(coarse) if guidance else None)


class ICNetDecoder(Decoder):
    def __init__(self, encoder, num_classes: int, width: int = WIDTH):
        super().__init__()
        self.sub1 = nn.Sequential(conv_bn(3, width // 2, 3, 2), conv_bn(width // 2, width // 2, 3, 2),
                                  conv_bn(width // 2, width, 3, 2))
        self.pyramid = PyramidPoolingSum()
        self.reduce = conv_bn(encoder.channels[-1], 4 * width, 1)
        sub2_channels = encoder.layers.layer2[0].conv3.out_channels
        self.cff24 = CascadeFeatureFusion(4 * width, sub2_channels, 2 * width, num_classes)
        self.cff12 = CascadeFeatureFusion(2 * width, width, 2 * width, num_classes)
        self.aux_weights = dict(LABEL_GUIDANCE_WEIGHTS)
        self.head_channels = 2 * width

    def features(self, encoder, x):
        b = encoder.layers
        sub1 = self.sub1(x)
        sub2 = b.layer2[0](b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(upsample_to(x, half_size(x))))))))
        sub4 = upsample_to(sub2, half_size(sub2))
        sub4 = b.layer4(b.layer3(b.layer2[1:](sub4)))
        return sub1, sub2, sub4

    def forward(self, features):
        sub1, sub2, sub4 = features
        sub4 = self.reduce(self.pyramid(sub4))
        guidance = self.training
        sub24, sub4_logits = self.cff24(sub4, sub2, guidance)
        sub124, sub24_logits = self.cff12(sub24, sub1, guidance)
        quarter = upsample_to(sub124, (sub124.shape[-2] * 2, sub124.shape[-1] * 2))
        if not guidance:
            return quarter
        return quarter, {"sub24": sub24_logits, "sub4": sub4_logits}


def build_icnet(num_classes: int, encoder: str, encoder_weights: WeightsSpec) -> SegmentationModel:
    check_pair("icnet", encoder, 8, FITS)
    body, _ = build_encoder(encoder, encoder_weights, output_stride=8)
    return SegmentationModel(body, ICNetDecoder(body, num_classes), num_classes)
