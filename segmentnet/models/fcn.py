"""FCN-32s, FCN-16s and FCN-8s on VGG16 or VGG19 (Long, Shelhamer and Darrell, CVPR 2015 / TPAMI 2017).

encoder   VGG's 13 (or 16) convolutions; conv1_1 padded by 100 and max-pools rounding up, as in the
          original Caffe nets, so that fc6 fits any input size
fc6, fc7  VGG's classifier as convolutions: 7x7 (no padding) and 1x1, each with ReLU and dropout 0.5
score     1x1 convolutions to class scores: score_fr on fc7, and for the skips score_pool4 (16s, 8s)
          and score_pool3 (8s), zero-initialised (as is score_fr: the paper found random no better)
upscore   transposed convolutions (kernel 2x stride, no bias) initialised to bilinear interpolation
crops     each fusion crops the skip at the offset that aligns the two maps (5 for pool4, 9 for pool3)
          and the final scores at 19 (32s), 27 (16s) or 31 (8s): the logits have exactly the input's size.
          The offsets follow from the layers' geometry: a map at stride s has its pixel i centred at
          input coordinate s*i + c, and each offset makes the two c's equal.

A decoder of the composition (compose.py) over torchvision's VGG16 or VGG19 (option encoder), whose
layers it changes to the Caffe geometry. Options: encoder vgg16|vgg19, encoder_weights (torchvision's
name or a file; fc6/fc7 take VGG's fc weights reshaped, 25088x4096 -> 4096x512x7x7 and 4096x4096 ->
4096x4096x1x1), fc_width (4096) and width (VGG's 64), smaller only for tests, without weights.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from .compose import SegmentationModel, check_pair
from .decoders import Decoder
from .encoders import build_encoder

FITS = ("vgg16", "vgg19")
FINAL_CROP = {32: 19, 16: 27, 8: 31}
POOL4_CROP, POOL3_CROP = 5, 9


def bilinear_upsampling_weight(channels: int, kernel_size: int) -> torch.Tensor:
    """Weight of a channel-wise transposed convolution that interpolates bilinearly (stride = kernel/2)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return weight


def upsampling(channels: int, stride: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(channels, channels, 2 * stride, stride, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_upsampling_weight(channels, 2 * stride))
    return layer


def zero_scores(in_channels: int, num_classes: int) -> nn.Conv2d:
    layer = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def crop_like(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2:]
    return x[..., offset:offset + h, offset:offset + w]


def caffe_layers(layers: nn.Sequential) -> None:
    """The original nets' geometry: conv1_1 padded by 100, max-pools rounding up."""
    layers[0].padding = (100, 100)
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True


def as_convolution(linear: nn.Linear, conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
        conv.bias.copy_(linear.bias)


class FCNsDecoder(Decoder):
    """fc6, fc7, the score layers and the upsampling fusions over VGG's pool3, pool4 and pool5."""

    own_init = True

    def __init__(self, encoder, num_classes: int, stride: int, fc_width: int):
        super().__init__()
        if stride not in FINAL_CROP:
            raise ConfigError(f"FCN stride must be one of {sorted(FINAL_CROP)}, got {stride}")
        self.stride = stride
        self.pools = [i for i, layer in enumerate(encoder.layers) if isinstance(layer, nn.MaxPool2d)][2:]
        channels = encoder.channels[-1]
        self.fc6 = nn.Conv2d(channels, fc_width, 7)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.score_fr = zero_scores(fc_width, num_classes)
        if stride == 32:
            self.upscore = upsampling(num_classes, 32)
        else:
            self.score_pool4 = zero_scores(channels, num_classes)
            self.upscore2 = upsampling(num_classes, 2)
        if stride == 16:
            self.upscore16 = upsampling(num_classes, 16)
        if stride == 8:
            self.score_pool3 = zero_scores(channels // 2, num_classes)
            self.upscore_pool4 = upsampling(num_classes, 2)
            self.upscore8 = upsampling(num_classes, 8)
        for fc in (self.fc6, self.fc7):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def features(self, encoder, x):
        return x, *encoder.taps(x, self.pools)

    def forward(self, features):
        x, pool3, pool4, pool5 = features
        h = self.drop(self.relu(self.fc6(pool5)))
        h = self.drop(self.relu(self.fc7(h)))
        scores = self.score_fr(h)
        if self.stride == 32:
            scores = self.upscore(scores)
        else:
            scores = self.upscore2(scores)
            scores = scores + crop_like(self.score_pool4(pool4), POOL4_CROP, scores)
            if self.stride == 16:
                scores = self.upscore16(scores)
            else:
                scores = self.upscore_pool4(scores)
                scores = scores + crop_like(self.score_pool3(pool3), POOL3_CROP, scores)
                scores = self.upscore8(scores)
        return crop_like(scores, FINAL_CROP[self.stride], x)


def fcn_s(num_classes: int, stride: int, encoder: str, encoder_weights, fc_width: int,
          width: int = 64) -> SegmentationModel:
    check_pair(f"fcn{stride}s", encoder, 32, FITS)
    # fc6/fc7 take VGG's classifier.0/.3 from the weights file; only ImageNet's classifier.6 is unused
    body, vgg = build_encoder(encoder, encoder_weights, layer_changes=caffe_layers, unused=("classifier.6.",),
                              width=width)
    decoder = FCNsDecoder(body, num_classes, stride, fc_width)
    if encoder_weights:
        if fc_width != 4096:
            raise ConfigError(f"fc_width {fc_width} with encoder_weights: VGG's fc6/fc7 weights need fc_width 4096")
        as_convolution(vgg.classifier[0], decoder.fc6)
        as_convolution(vgg.classifier[3], decoder.fc7)
    return SegmentationModel(body, decoder, num_classes)
