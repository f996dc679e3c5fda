"""ResNet FCN and DeepLabV3 (Chen et al., 2017) on dilated ResNet-50/101, as torchvision builds them.

backbone        ResNet with layer3 and layer4 dilated (2 and 4) instead of strided: output stride 8
classifier      FCN head (3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 conv) or DeepLabV3's
                head: ASPP (a 1x1 conv, 3x3 convs at rates 12, 24, 36 and image pooling, 256 channels
                each, projected to 256 with dropout 0.5), a 3x3 conv-BN-ReLU and a 1x1 conv
aux_classifier  optional FCN head on layer3; in training the model returns {"out", "aux"} with
                aux_weights {"aux": 0.5}, the weight of torchvision's reference training

Logits (and aux logits) are bilinearly upsampled to the input's size. Module names follow torchvision
(backbone, classifier, aux_classifier). Options: aux, pretrained_backbone (path or true:
resnet50-0676ba61.pth / resnet101-63fe2227.pth), width (64; smaller only for tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNet, conv_bn
from .pretrained import BackboneSpec, load_pretrained_backbone

AUX_WEIGHT = 0.5


def fcn_head(in_channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, in_channels // 4, 3), nn.Dropout(0.1),
                         nn.Conv2d(in_channels // 4, num_classes, 1))


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv-BN-ReLU, spread back over the map."""

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, rates=(12, 24, 36), channels: int = 256):
        super().__init__()
        branches = [conv_bn(in_channels, channels, 1)]
        branches += [conv_bn(in_channels, channels, 3, dilation=rate) for rate in rates]
        branches.append(ASPPPooling(nn.AdaptiveAvgPool2d(1), *conv_bn(in_channels, channels, 1)))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn(len(branches) * channels, channels, 1), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def deeplab_head(in_channels: int, num_classes: int, channels: int = 256) -> nn.Sequential:
    return nn.Sequential(ASPP(in_channels, channels=channels), *conv_bn(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))


class ResNetSegmentation(nn.Module):
    def __init__(self, num_classes: int, depth: int = 50, head: str = "fcn", aux: bool = True,
                 pretrained_backbone=None, width: int = 64):
        super().__init__()
        self.backbone = ResNet(depth, width=width, replace_stride_with_dilation=(False, True, True))
        channels = self.backbone.out_channels
        if head == "fcn":
            self.classifier = fcn_head(channels, num_classes)
        else:
            self.classifier = deeplab_head(channels, num_classes, channels=4 * width)
        self.aux_classifier = fcn_head(channels // 2, num_classes) if aux else None
        self.aux_weights = {"aux": AUX_WEIGHT} if aux else {}
        if pretrained_backbone:
            targets = dict(self.backbone.state_dict())
            load_pretrained_backbone(pretrained_backbone, f"resnet{depth}", targets, ignore=("fc.",))

    def forward(self, x):
        size = x.shape[-2:]
        b = self.backbone
        layer3 = b.layer3(b.layer2(b.layer1(b.stem(x))))
        out = F.interpolate(self.classifier(b.layer4(layer3)), size=size, mode="bilinear", align_corners=False)
        if not (self.training and self.aux_classifier is not None):
            return out
        aux = F.interpolate(self.aux_classifier(layer3), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}


def fcn_resnet50(num_classes: int, aux: bool = True, pretrained_backbone: BackboneSpec = None, width: int = 64):
    return ResNetSegmentation(num_classes, 50, "fcn", aux, pretrained_backbone, width)


def fcn_resnet101(num_classes: int, aux: bool = True, pretrained_backbone: BackboneSpec = None, width: int = 64):
    return ResNetSegmentation(num_classes, 101, "fcn", aux, pretrained_backbone, width)


def deeplabv3_resnet50(num_classes: int, aux: bool = True, pretrained_backbone: BackboneSpec = None, width: int = 64):
    return ResNetSegmentation(num_classes, 50, "deeplabv3", aux, pretrained_backbone, width)


def deeplabv3_resnet101(num_classes: int, aux: bool = True, pretrained_backbone: BackboneSpec = None, width: int = 64):
    return ResNetSegmentation(num_classes, 101, "deeplabv3", aux, pretrained_backbone, width)
