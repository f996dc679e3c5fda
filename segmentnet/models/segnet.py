"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017).

encoder  torchvision's VGG16-BN, its 13 convolutions; each max-pool keeps the indices of its maxima
decoder  the mirror image: per stage a max-unpooling at the encoder's indices (sparse upsampling, no
         learned weights), then conv-BN-ReLU layers mirroring the stage's convolutions; the last one
         gives the class logits

A decoder of the composition (compose.py), which pads the input to a multiple of 32 for the pooling
indices and crops the logits back to the input's size.
"""
from __future__ import annotations

from torch import nn

from .compose import SegmentationModel, check_pair
from .decoders import Decoder, conv_bn
from .encoders import build_encoder
from .pretrained import WeightsSpec

FITS = ("vgg16_bn",)


def keep_indices(layers: nn.Sequential) -> None:
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            layer.return_indices = True


class SegNetDecoder(Decoder):
    pad_multiple = 32
    unpools_at_maxima = True

    def __init__(self, layers: nn.Sequential, num_classes: int):
        super().__init__()
        # The encoder's convolutions stage by stage as (in, out) channel pairs, to mirror.
        stages, convs = [], []
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                convs.append((layer.in_channels, layer.out_channels))
            elif isinstance(layer, nn.MaxPool2d):
                stages.append(convs)
                convs = []
        decoder = [nn.Sequential(*(conv_bn(out, inp, 3) for inp, out in reversed(convs))) for convs in reversed(stages)]
        first = stages[0][0][1]
        decoder[-1][-1] = nn.Conv2d(first, num_classes, 3, padding=1)  # the last layer: class logits
        self.stages = nn.ModuleList(decoder)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def features(self, encoder, x):
        pooled = []  # (indices, size before pooling) per stage
        for layer in encoder.layers:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pooled.append((indices, size))
            else:
                x = layer(x)
        return x, pooled

    def forward(self, features):
        x, pooled = features
        pooled = list(pooled)
        for stage in self.stages:
            indices, size = pooled.pop()
            x = stage(self.unpool(x, indices, output_size=size))
        return x


def build_segnet(num_classes: int, encoder: str, encoder_weights: WeightsSpec, width: int = 64) -> SegmentationModel:
    check_pair("segnet", encoder, 32, FITS)
    body, _ = build_encoder(encoder, encoder_weights, width=width)
    keep_indices(body.layers)  # (after the encoder has found its stages with plain pools)
    return SegmentationModel(body, SegNetDecoder(body.layers, num_classes), num_classes)
