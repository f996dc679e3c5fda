"""The one composition of a model: encoder -> decoder -> head, as segmentation_models.pytorch builds it.

SegmentationModel does, once for every model, what each would otherwise repeat: padding the input to
the decoder's multiple, classifying the decoder's map (a 1x1 convolution, unless the decoder gives
class scores itself), the auxiliary heads (torchvision's FCN head on the stage before the deepest, Encoder.aux_stage),
upsampling every output bilinearly to the input's size and cropping the padding off, and initialising
what is new (He initialisation; the encoder keeps torchvision's or its pretrained weights).

A model with auxiliary outputs returns, in training mode only, {"out": logits, "<name>": logits} and
has `aux_weights` ({"<name>": weight}); in eval mode every model returns the logits tensor.

compose() builds one from names: compose(21, "unet", encoder="resnet34", encoder_weights="DEFAULT").
A decoder names the encoders it fits (DECODERS[...].fits, None for all); an unfitting pair, or an
output stride the encoder cannot give, is refused naming what fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..core.errors import ConfigError
from .decoders import DeepLabV3Decoder, DeepLabV3PlusDecoder, FCNDecoder, FPNDecoder, UNetDecoder, aux_head, upsample_to
from .encoders import ENCODERS, OUTPUT_STRIDES, build_encoder, encoder_spec, encoders_with
from .legacy import TORCHVISION_KEYS, renamed
from .pretrained import copy_state, read_weights
from .segmentnet import pad_to_multiple

AUX_WEIGHT = 0.5  # torchvision's reference training weighs its auxiliary loss by 0.5


def he_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegmentationModel(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int, aux: bool = False):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        channels = decoder.head_channels
        self.head = nn.Conv2d(channels, num_classes, 1) if channels else nn.Identity()
        self.aux_heads = nn.ModuleDict({"aux": aux_head(encoder.channels[encoder.aux_stage], num_classes)} if aux else {})
        self.aux_weights = {"aux": AUX_WEIGHT} if aux else {}
        self.aux_weights |= getattr(decoder, "aux_weights", {})
        for module in ([] if decoder.own_init else [decoder]) + [self.head, self.aux_heads]:
            he_init(module)

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, self.decoder.pad_multiple)
        size = x.shape[-2:]
        features = self.decoder.features(self.encoder, x)
        out = self.decoder(features)
        extra = {}
        if isinstance(out, tuple):  # (map, {name: auxiliary logits}) of a decoder with its own (ICNet)
            out, extra = out
        logits = upsample_to(self.head(out), size)[..., :h, :w]
        if not self.training or not self.aux_weights:
            return logits
        extra |= {name: head(features[self.encoder.aux_stage]) for name, head in self.aux_heads.items()}
        return {"out": logits, **{name: upsample_to(v, size)[..., :h, :w] for name, v in extra.items()}}


@dataclass(frozen=True)
class DecoderSpec:
    build: Callable[..., nn.Module]    # (channels, strides, num_classes) -> decoder
    output_stride: int                 # the default
    paper: str
    fits: tuple[str, ...] | None = None  # the encoders it fits (None: all)


DECODERS = {
    "unet": DecoderSpec(UNetDecoder, 32, "Ronneberger, Fischer & Brox: U-Net, MICCAI 2015"),
    "fpn": DecoderSpec(FPNDecoder, 32, "Kirillov, Girshick, He & Dollar: Panoptic FPN, CVPR 2019"),
    "deeplabv3": DecoderSpec(DeepLabV3Decoder, 8, "Chen et al.: Rethinking Atrous Convolution (DeepLabV3), 2017"),
    "deeplabv3plus": DecoderSpec(DeepLabV3PlusDecoder, 16, "Chen et al.: DeepLabV3+, ECCV 2018"),
    "fcn": DecoderSpec(FCNDecoder, 8, "Long, Shelhamer & Darrell: Fully Convolutional Networks, CVPR 2015"),
}


def check_pair(decoder: str, encoder: str, output_stride: int, fits=None) -> None:
    """Refuse an encoder the decoder does not fit, naming what fits."""
    encoder_spec(encoder)  # an unknown name lists the choices
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if fits is not None and encoder not in fits:
        raise ConfigError(f"decoder {decoder} does not fit encoder {encoder}; it fits: {', '.join(fits)}")
    native = ENCODERS[encoder].stride
    if output_stride < native and not ENCODERS[encoder].dilatable:
        raise ConfigError(f"decoder {decoder} at output stride {output_stride} needs an encoder that can dilate "
                          f"({', '.join(encoders_with(output_stride))}); encoder {encoder} cannot (its output "
                          f"stride is {native}): choose one of those, or set output_stride {native}")


def compose(num_classes: int, decoder: str, encoder: str, encoder_weights=None, output_stride: int | None = None,
            aux: bool = False) -> SegmentationModel:
    spec = DECODERS[decoder]
    output_stride = spec.output_stride if output_stride is None else output_stride
    check_pair(decoder, encoder, output_stride, spec.fits)
    body, _ = build_encoder(encoder, encoder_weights, output_stride)
    return SegmentationModel(body, spec.build(body.channels, body.strides, num_classes), num_classes, aux)


def from_torchvision(state: dict) -> dict:
    """A state_dict of torchvision's fcn_resnet*/deeplabv3_resnet* in our composition's key layout."""
    return renamed(state, TORCHVISION_KEYS)


def load_segmentation_weights(model: SegmentationModel, spec: str, name: str) -> None:
    """torchvision's segmentation weights (a name such as COCO_WITH_VOC_LABELS_V1, or a file) into a
    composed fcn_resnet*/deeplabv3_resnet*. A head of another class count stays newly initialised (said in
    the log), as do the auxiliary head's weights when the file has none; an auxiliary head the model
    does not have is ignored."""
    state, source = read_weights(spec, name, "weights")
    state = from_torchvision(state)
    own = model.state_dict()
    fresh = sorted({k.rsplit(".", 1)[0] for k, v in state.items() if k in own and own[k].shape != v.shape
                    and k.startswith(("head.", "aux_heads."))})
    keep = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in fresh}
    targets = {k: v for k, v in own.items() if k.rsplit(".", 1)[0] not in fresh}
    if not model.aux_heads:
        keep = {k: v for k, v in keep.items() if not k.startswith("aux_heads.")}
    elif not any(k.startswith("aux_heads.") for k in keep):
        targets = {k: v for k, v in targets.items() if not k.startswith("aux_heads.")}
    copy_state(keep, targets, source, "weights", name)
    if fresh:
        print(f"{name}: weights {spec} have another number of classes: {', '.join(fresh)} newly initialised")
