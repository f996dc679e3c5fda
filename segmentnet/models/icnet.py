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

Widths: the backbone is torchvision's ResNet-50 at full width, so resnet50-0676ba61.pth loads (option
pretrained_backbone); the paper reaches its speed by then pruning every layer's kernels by half, which
width=32 gives (from scratch). `width` scales every channel count (sub1 width/2, width/2, width; 4*width
after pyramid pooling; CFF 2*width).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .backbones import ResNet, conv_bn
from .pretrained import BackboneSpec, load_pretrained_backbone

PYRAMID_BINS = (1, 2, 3, 6)
LABEL_GUIDANCE_WEIGHTS = {"sub24": 0.4, "sub4": 0.4}


def upsample_to(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def half_size(x):
    return (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2


class PyramidPoolingSum(nn.Module):
    """Average pools over 1x1, 2x2, 3x3 and 6x6 bins, upsampled and added to the map (no weights)."""

    def forward(self, x):
        size = x.shape[-2:]
        return x + sum(upsample_to(F.adaptive_avg_pool2d(x, bins), size) for bins in PYRAMID_BINS)


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


class ICNet(nn.Module):
    option_ranges = {"width": (2, 1024)}  # its first branch has width // 2 channels

    def __init__(self, num_classes: int, pretrained_backbone: BackboneSpec = None, width: int = 64):
        super().__init__()
        self.sub1 = nn.Sequential(conv_bn(3, width // 2, 3, 2), conv_bn(width // 2, width // 2, 3, 2),
                                  conv_bn(width // 2, width, 3, 2))
        self.backbone = ResNet(50, width=width, replace_stride_with_dilation=(False, True, True))
        self.pyramid = PyramidPoolingSum()
        self.reduce = conv_bn(self.backbone.out_channels, 4 * width, 1)
        self.cff24 = CascadeFeatureFusion(4 * width, 8 * width, 2 * width, num_classes)
        self.cff12 = CascadeFeatureFusion(2 * width, width, 2 * width, num_classes)
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)
        self.aux_weights = dict(LABEL_GUIDANCE_WEIGHTS)
        for m in [self.sub1, self.reduce, self.cff24, self.cff12]:
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if pretrained_backbone:
            targets = dict(self.backbone.state_dict())
            load_pretrained_backbone(pretrained_backbone, "resnet50", targets, ignore=("fc.",))

    def forward(self, x):
        size, b = x.shape[-2:], self.backbone
        sub1 = self.sub1(x)
        sub2 = b.layer2[0](b.layer1(b.stem(upsample_to(x, half_size(x)))))
        sub4 = upsample_to(sub2, half_size(sub2))
        sub4 = self.reduce(self.pyramid(b.layer4(b.layer3(b.layer2[1:](sub4)))))
        guidance = self.training
        sub24, sub4_logits = self.cff24(sub4, sub2, guidance)
        sub124, sub24_logits = self.cff12(sub24, sub1, guidance)
        quarter = (sub124.shape[-2] * 2, sub124.shape[-1] * 2)
        out = upsample_to(self.classifier(upsample_to(sub124, quarter)), size)
        if not guidance:
            return out
        return {"out": out, "sub24": sub24_logits, "sub4": sub4_logits}

