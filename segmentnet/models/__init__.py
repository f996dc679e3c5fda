"""Model registry: a plain dict of name -> constructor(num_classes, **options).

A model returns logits of shape (N, num_classes, H, W) at the input's size. A model with
auxiliary heads returns, in training mode only, a dict {"out": logits, "<aux name>": logits, ...}
and has an attribute `aux_weights` ({"<aux name>": default weight}); the training loop adds the
weighted auxiliary losses. In eval mode every model returns the plain logits tensor.

Models with an ImageNet backbone take the option `pretrained_backbone` (a path, or true for
torchvision's file through torch.hub's cache; see pretrained.py). To rebuild a trained model from a
checkpoint, call build_model(..., pretrained=False): the checkpoint holds every weight already.
"""
from __future__ import annotations

from ..errors import UnknownNameError

import inspect
from typing import Callable

from torch import nn

from .deeplab import deeplabv3_resnet50, deeplabv3_resnet101, fcn_resnet50, fcn_resnet101
from .fcn import fcn8s, fcn16s, fcn32s
from .hypercolumns import hypercolumn_squeezenet, hypercolumn_vgg16
from .icnet import ICNet
from .segmentnet import SegmentNet
from .segnet import SegNet
from .unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "segmentnet": SegmentNet,
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "unet": UNet,
    "segnet": SegNet,
    "icnet": ICNet,
    "fcn_resnet50": fcn_resnet50,
    "fcn_resnet101": fcn_resnet101,
    "deeplabv3_resnet50": deeplabv3_resnet50,
    "deeplabv3_resnet101": deeplabv3_resnet101,
    "hypercolumn_vgg16": hypercolumn_vgg16,
    "hypercolumn_squeezenet": hypercolumn_squeezenet,
}


def build_model(name: str, num_classes: int, pretrained: bool = True, **options) -> nn.Module:
    """pretrained=False skips the options that only initialise (restoring from a checkpoint)."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}") from None
    accepted = [p for p in inspect.signature(constructor).parameters if p not in ("self", "num_classes")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnknownNameError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(accepted)}")
    if not pretrained:
        for option in ("pretrained_backbone", "classifier_init"):
            options.pop(option, None)
    return constructor(num_classes=num_classes, **options)


__all__ = ["MODELS", "SegmentNet", "build_model"]
