"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017).

encoder  VGG16-BN's 13 convolutions (torchvision's vgg16_bn key layout, so vgg16_bn-6c64b313.pth loads);
         each max-pool keeps the indices of its maxima
decoder  the mirror image: per stage a max-unpooling at the encoder's indices (sparse upsampling, no
         learned weights), then conv-BN-ReLU layers mirroring the stage's convolutions; the last one
         gives the class logits

The input is padded to a multiple of 32 and the logits cropped back to the input's size.
"""
from __future__ import annotations

from torch import nn

from .backbones import conv_bn, vgg16_bn
from .pretrained import BackboneSpec, load_pretrained_backbone
from .segmentnet import pad_to_multiple


class SegNet(nn.Module):
    def __init__(self, num_classes: int, pretrained_backbone: BackboneSpec = None, width: int = 64):
        super().__init__()
        self.encoder = vgg16_bn(width=width, return_indices=True)
        # The encoder's convolutions stage by stage as (in, out) channel pairs, to mirror.
        stages, convs = [], []
        for layer in self.encoder.features:
            if isinstance(layer, nn.Conv2d):
                convs.append((layer.in_channels, layer.out_channels))
            elif isinstance(layer, nn.MaxPool2d):
                stages.append(convs)
                convs = []
        decoder = []
        for convs in reversed(stages):
            decoder.append(nn.Sequential(*(conv_bn(out, inp, 3) for inp, out in reversed(convs))))
        decoder[-1][-1] = nn.Conv2d(width, num_classes, 3, padding=1)  # the last layer: class logits
        self.decoder = nn.ModuleList(decoder)
        self.unpool = nn.MaxUnpool2d(2, 2)
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if pretrained_backbone:
            targets = {f"features.{k}": v for k, v in self.encoder.features.state_dict().items()}
            load_pretrained_backbone(pretrained_backbone, "vgg16_bn", targets, ignore=("classifier.",))

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, 32)
        pooled = []  # (indices, size before pooling) per stage
        for layer in self.encoder.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pooled.append((indices, size))
            else:
                x = layer(x)
        for stage in self.decoder:
            indices, size = pooled.pop()
            x = stage(self.unpool(x, indices, output_size=size))
        return x[..., :h, :w]
