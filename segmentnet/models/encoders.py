"""Encoders: torchvision's ImageNet classifiers without their classifier, as a list of stages.

An Encoder holds the layers of a torchvision model, in order, as one Sequential (`layers`), with
the module names torchvision gives them (VGG's `features.N` become `layers.N`, ResNet's `layer1`
becomes `layers.layer1`), and the indices at which its stages end. A stage ends where the next
layer halves the resolution, so stage i's output has stride `strides[i]` (1 or 2 for the first, 32
for the last; 16 for SqueezeNet). forward(x) returns the stages' outputs, shallow to deep.

Output stride: the decoders that want dense deep features (DeepLabV3, torchvision's FCN) ask for
8 or 16. ResNet-50/101 get it from torchvision itself (replace_stride_with_dilation, the pattern its
segmentation models use); ResNet-18/34 (whose BasicBlock torchvision cannot dilate), MobileNetV3 and
EfficientNet by setting each strided convolution of the deep stages to stride 1 and dilating their
kernels instead, as segmentation_models.pytorch does. VGG, SqueezeNet (max-pools) and ConvNeXt
(patchifying 2x2 downsampling) have output stride 32 only.

Weights (`encoder_weights`): None (random), a name of torchvision's Weights enum of that model
("IMAGENET1K_V1", "DEFAULT", ...), fetched through torch.hub's cache, or a file path: a state_dict
in torchvision's key layout of that model (its classifier's keys are ignored). See pretrained.py.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError, UnknownNameError
from .pretrained import WeightsSpec, load_encoder_weights

PROBE_SIZE = 128  # the side of the blank image that finds where the stages end


@dataclass(frozen=True)
class EncoderSpec:
    family: str                 # resnet, vgg, squeezenet, mobilenet, efficientnet, convnext
    dilatable: bool             # whether output stride 8 and 16 are possible
    paper: str
    stride: int = 32            # its deepest stage's stride without dilation


ENCODERS = {
    "vgg16": EncoderSpec("vgg", False, "Simonyan & Zisserman, ICLR 2015"),
    "vgg19": EncoderSpec("vgg", False, "Simonyan & Zisserman, ICLR 2015"),
    "vgg16_bn": EncoderSpec("vgg", False, "Simonyan & Zisserman, ICLR 2015 (with batch norm)"),
    "resnet18": EncoderSpec("resnet", True, "He et al., CVPR 2016"),
    "resnet34": EncoderSpec("resnet", True, "He et al., CVPR 2016"),
    "resnet50": EncoderSpec("resnet", True, "He et al., CVPR 2016"),
    "resnet101": EncoderSpec("resnet", True, "He et al., CVPR 2016"),
    "squeezenet1_1": EncoderSpec("squeezenet", False, "Iandola et al., 2016", stride=16),
    "mobilenet_v3_large": EncoderSpec("mobilenet", True, "Howard et al., ICCV 2019"),
    "efficientnet_b0": EncoderSpec("efficientnet", True, "Tan & Le, ICML 2019"),
    "convnext_tiny": EncoderSpec("convnext", False, "Liu et al., CVPR 2022"),
}
OUTPUT_STRIDES = (8, 16, 32)
VGG_CONFIGS = {"vgg16": "D", "vgg19": "E", "vgg16_bn": "D"}  # torchvision's names of their layer lists
TORCHVISION_DILATION = ("resnet50", "resnet101")  # torchvision dilates these itself (Bottleneck blocks)


def encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown encoder {name!r}; choices: {', '.join(ENCODERS)}") from None


def encoders_with(output_stride: int) -> list[str]:
    return [name for name, spec in ENCODERS.items() if output_stride >= spec.stride or spec.dilatable]


def torchvision_layers(name: str, model: nn.Module) -> tuple[nn.Sequential, tuple[str, ...]]:
    """(the layers an encoder keeps, in order, named as in the model; prefixes of the model's keys it drops)."""
    if ENCODERS[name].family == "resnet":
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names)), ("fc.",)
    return model.features, ("classifier.",)


def stage_ends(layers: nn.Sequential, resnet: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(index of each stage's last layer, each stage's stride, its channels), found by passing a blank
    image through the layers: a stage ends where the next layer makes the map smaller. A ResNet's
    stages are its named parts (stem, maxpool+layer1, layer2, layer3, layer4), dilated or not."""
    parameter = next(layers.parameters())
    x = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=parameter.device, dtype=parameter.dtype)
    training = layers.training
    sizes, channels = [], []
    with torch.no_grad():
        layers.eval()
        for layer in layers:
            x = layer(x)
            sizes.append(x.shape[-1])
            channels.append(x.shape[1])
        layers.train(training)
    if resnet:
        ends = [2, 4, 5, 6, 7]
        return ends, [2, 4, 8, 16, 32], [channels[i] for i in ends]
    strides = [2 ** round(math.log2(PROBE_SIZE / size)) for size in sizes]
    ends = [i for i in range(len(layers) - 1) if strides[i + 1] > strides[i]] + [len(layers) - 1]
    return ends, [strides[i] for i in ends], [channels[i] for i in ends]


def dilate(stage: nn.Module, rate: int) -> None:
    """Stride 1 and dilation `rate` instead of stride 2, for every convolution of a stage."""
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d):
            if conv.stride != (1, 1):
                conv.stride = (1, 1)
            kernel = conv.kernel_size[0]
            if kernel > 1:
                conv.dilation = (rate, rate)
                conv.padding = (rate * (kernel - 1) // 2,) * 2


class Encoder(nn.Module):
    def __init__(self, name: str, layers: nn.Sequential, output_stride: int = 32):
        super().__init__()
        self.name, self.layers = name, layers
        resnet = ENCODERS[name].family == "resnet"
        self.ends, self.strides, self.channels = stage_ends(layers, resnet)
        if output_stride < self.strides[-1] and name not in TORCHVISION_DILATION:
            start = 0
            for end, stride in zip(self.ends, self.strides):
                if stride > output_stride:
                    dilate(layers[start: end + 1], stride // output_stride)
                start = end + 1
        self.strides = [min(s, output_stride) for s in self.strides]
        self.output_stride = self.strides[-1]
        # The stage an auxiliary head taps: the one before the deepest stage with convolutions (a
        # ResNet's layer3; VGG's relu4_3, as its last stage is pool5 alone)
        with_convs = [i for i, (start, end) in enumerate(zip([0] + [e + 1 for e in self.ends], self.ends))
                      if any(isinstance(m, nn.Conv2d) for m in layers[start: end + 1].modules())]
        self.aux_stage = max(0, with_convs[-1] - 1)

    def forward(self, x) -> list[torch.Tensor]:
        features, start = [], 0
        for end in self.ends:
            for layer in self.layers[start: end + 1]:
                x = layer(x)
            features.append(x)
            start = end + 1
        return features

    def taps(self, x, indices) -> list[torch.Tensor]:
        """The outputs of the layers at `indices` (sorted), running the layers only as far as needed."""
        out, wanted = [], set(indices)
        for i, layer in enumerate(self.layers[: max(indices) + 1]):
            x = layer(x)
            if i in wanted:
                out.append(x)
        return out


class VGGFeatures(nn.Module):
    """torchvision's VGG without its classifier (whose 120 M weights an encoder would build to drop):
    `features` from torchvision's make_layers, initialised as torchvision's VGG initialises them, with
    every channel count scaled by width/64 (64 is torchvision's; narrower only for tests and quick
    experiments: ImageNet weights need 64)."""

    def __init__(self, name: str, width: int = 64):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        config = [v if v == "M" else max(1, v * width // 64) for v in cfgs[VGG_CONFIGS[name]]]
        self.features = make_layers(config, batch_norm=name.endswith("_bn"))
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_encoder(name: str, weights: WeightsSpec = None, output_stride: int = 32, layer_changes=None,
                  unused: tuple[str, ...] | None = None, width: int = 64) -> tuple[Encoder, nn.Module]:
    """(encoder, the torchvision model it was cut from: its classifier is still there, for FCN's fc6/fc7).

    layer_changes(layers) may alter the layers before the stages are found (FCN's Caffe padding).
    unused: prefixes of the model's keys that the weights need not have (default: its classifier).
    """
    spec = encoder_spec(name)
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if output_stride < spec.stride and not spec.dilatable:
        raise ConfigError(f"encoder {name} cannot dilate (its output stride is {spec.stride}); output stride "
                          f"{output_stride} needs one of: {', '.join(encoders_with(output_stride))}")
    kwargs = {}
    if name in TORCHVISION_DILATION and output_stride < 32:
        kwargs["replace_stride_with_dilation"] = [False, output_stride == 8, True]
    if width != 64 and (spec.family != "vgg" or weights):
        raise ConfigError(f"width {width}: only VGG encoders take another width than 64, and only without weights")
    import torchvision  # (2 s to import: only when an encoder is built)

    if spec.family == "vgg" and not (weights and unused is not None):  # (FCN with weights: fc6/fc7 from it)
        model = VGGFeatures(name, width)
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    layers, dropped = torchvision_layers(name, model)
    if weights:
        load_encoder_weights(weights, name, model, dropped if unused is None else unused)
    if layer_changes is not None:
        layer_changes(layers)
    return Encoder(name, layers, output_stride), model
