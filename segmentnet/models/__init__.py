"""Model registry: a plain dict of name -> constructor(num_classes, **options).

A model returns logits of shape (N, num_classes, H, W) at the input's size. A model with
auxiliary heads returns, in training mode only, a dict {"out": logits, "<aux name>": logits, ...}
and has an attribute `aux_weights` ({"<aux name>": default weight}); the training loop adds the
weighted auxiliary losses. In eval mode every model returns the plain logits tensor.

Every model but SegmentNet is one composition (compose.py): a torchvision encoder (encoders.py), a
decoder and a head. The decoders unet, fpn, deeplabv3, deeplabv3plus and fcn take any encoder they
fit (option `encoder`); the seeds' own models (fcn8s, segnet, icnet, hypercolumn_*) and torchvision's
fcn_resnet50 & co. are named compositions. Options `encoder_weights` (torchvision's weights name
such as "IMAGENET1K_V1" or "DEFAULT", or a file) and, for torchvision's segmentation models,
`weights` (such as "COCO_WITH_VOC_LABELS_V1"). To rebuild a trained model from a checkpoint, call
build_model(..., pretrained=False): the checkpoint holds every weight already.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Callable

from torch import nn

from ..core.checkpoint import clean_state_dict, load_weights
from ..core.config import is_number
from ..core.errors import ConfigError, DataError, UnknownNameError
from .encoders import ENCODERS
from .legacy import upgrade
from .pretrained import WeightsSpec
from .segmentnet import SegmentNet

# torchvision (2 s to import) is imported only when a model that needs it is built, so that scripts
# which only read a checkpoint of SegmentNet, or only check options, start quickly.


def _compose(*args) -> nn.Module:
    from .compose import compose
    return compose(*args)


def decoder_model(decoder: str, default_encoder: str, default_stride: int) -> Callable[..., nn.Module]:
    """The registry's constructor of a general decoder over any encoder it fits (see compose.py)."""
    def build(num_classes: int, encoder: str = default_encoder, encoder_weights: WeightsSpec = None,
              output_stride: int = default_stride, aux: bool = False) -> nn.Module:
        return _compose(num_classes, decoder, encoder, encoder_weights, output_stride, aux)

    build.__name__ = decoder
    return build


# decoder -> (its default encoder, its default output stride: DeepLab's papers' and torchvision's)
DECODER_DEFAULTS = {"unet": ("resnet34", 32), "fpn": ("resnet34", 32), "deeplabv3": ("resnet50", 8),
                    "deeplabv3plus": ("resnet50", 16), "fcn": ("resnet50", 8)}


def _fcn_s(num_classes: int, stride: int, encoder: str, encoder_weights, fc_width: int, width: int) -> nn.Module:
    from .fcn import fcn_s
    return fcn_s(num_classes, stride, encoder, encoder_weights, fc_width, width)


def fcn32s(num_classes: int, encoder: str = "vgg16", encoder_weights: WeightsSpec = None,
           fc_width: int = 4096, width: int = 64) -> nn.Module:
    return _fcn_s(num_classes, 32, encoder, encoder_weights, fc_width, width)


def fcn16s(num_classes: int, encoder: str = "vgg16", encoder_weights: WeightsSpec = None,
           fc_width: int = 4096, width: int = 64) -> nn.Module:
    return _fcn_s(num_classes, 16, encoder, encoder_weights, fc_width, width)


def fcn8s(num_classes: int, encoder: str = "vgg16", encoder_weights: WeightsSpec = None,
          fc_width: int = 4096, width: int = 64) -> nn.Module:
    return _fcn_s(num_classes, 8, encoder, encoder_weights, fc_width, width)


def segnet(num_classes: int, encoder: str = "vgg16_bn", encoder_weights: WeightsSpec = None,
           width: int = 64) -> nn.Module:
    from .segnet import build_segnet
    return build_segnet(num_classes, encoder, encoder_weights, width)


def icnet(num_classes: int, encoder: str = "resnet50", encoder_weights: WeightsSpec = None) -> nn.Module:
    from .icnet import build_icnet
    return build_icnet(num_classes, encoder, encoder_weights)


def torchvision_segmentation(name: str, num_classes: int, aux: bool, encoder_weights, weights) -> nn.Module:
    """torchvision's fcn_resnet50/101 and deeplabv3_resnet50/101: dilated ResNet (output stride 8), its
    head, the auxiliary FCN head on layer3; `weights` loads torchvision's segmentation weights."""
    from .compose import load_segmentation_weights

    decoder, encoder = name.split("_")
    if weights and encoder_weights:
        raise ConfigError(f"{name}: give weights (the whole model's) or encoder_weights, not both")
    model = _compose(num_classes, decoder, encoder, encoder_weights, 8, aux)
    if weights:
        load_segmentation_weights(model, weights, name)
    return model


def torchvision_model(name: str) -> Callable[..., nn.Module]:
    """The registry's constructor of one of torchvision's segmentation models."""
    def build(num_classes: int, aux: bool = True, encoder_weights: WeightsSpec = None,
              weights: WeightsSpec = None) -> nn.Module:
        return torchvision_segmentation(name, num_classes, aux, encoder_weights, weights)

    build.__name__ = name
    return build


TORCHVISION_MODELS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")


def _hypercolumns(num_classes: int, cnn: str, *args) -> nn.Module:
    from .hypercolumns import Hypercolumns
    return Hypercolumns(num_classes, cnn, *args)


def hypercolumn_squeezenet(num_classes: int, layers: list[int] | None = None, hidden: int = 512,
                           finetune: bool = False, encoder_weights: WeightsSpec = None,
                           classifier_init: str | None = None, cnn_seed: int = 0) -> nn.Module:
    return _hypercolumns(num_classes, "squeezenet", layers, hidden, finetune, encoder_weights, classifier_init,
                         cnn_seed)


def hypercolumn_vgg16(num_classes: int, layers: list[int] | None = None, hidden: int = 512,
                      finetune: bool = False, encoder_weights: WeightsSpec = None,
                      classifier_init: str | None = None, cnn_seed: int = 0, width: int = 64) -> nn.Module:
    return _hypercolumns(num_classes, "vgg16", layers, hidden, finetune, encoder_weights, classifier_init, cnn_seed,
                         width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "segmentnet": SegmentNet,
    **{name: decoder_model(name, *defaults) for name, defaults in DECODER_DEFAULTS.items()},
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "segnet": segnet,
    "icnet": icnet,
    **{name: torchvision_model(name) for name in TORCHVISION_MODELS},
    "hypercolumn_vgg16": hypercolumn_vgg16,
    "hypercolumn_squeezenet": hypercolumn_squeezenet,
}


# The range (inclusive) of each numeric option, for every model that takes it; a model's constructor
# may narrow it with an attribute `option_ranges` of its own (e.g. SqueezeNet's width).
OPTION_RANGES = {
    "width": (1, 1024), "depth": (1, 8), "blocks": (1, 16), "max_width": (1, 8192), "in_channels": (3, 3),
    "fc_width": (1, 16384), "hidden": (0, 16384), "cnn_seed": (0, 2 ** 32 - 1), "output_stride": (8, 32),
}


def _constructor(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}") from None


def _options_of(constructor) -> dict[str, inspect.Parameter]:
    return {p: v for p, v in inspect.signature(constructor).parameters.items()
            if p not in ("self", "num_classes") and v.kind is not inspect.Parameter.VAR_KEYWORD}


def _hints(constructor) -> dict:
    try:
        return typing.get_type_hints(constructor.__init__ if isinstance(constructor, type) else constructor)
    except Exception:  # an annotation that does not resolve (a model registered elsewhere): no type check
        return {}


def _fits(value, hint) -> bool:
    """Whether a JSON value fits a type annotation (int, float, bool, str, None, list[...], unions)."""
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return type(value) is int
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    return True  # an annotation this check does not know: the model checks the value itself


def _described(hint) -> str:
    if hint is None or hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_described(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        items = typing.get_args(hint)[0] if typing.get_args(hint) else None
        return "a list" + {int: " of whole numbers", float: " of numbers", str: " of texts"}.get(items, "")
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}.get(hint, str(hint))


def model_option_problems(name: str, options: dict) -> list[str]:
    """Every way `options` do not fit model `name`: unknown names, values of the wrong type (from the
    constructor's annotations) or out of range (OPTION_RANGES and the constructor's own). The one
    check of model options, run before any work by the training and by build_model."""
    constructor = _constructor(name)
    if not isinstance(options, dict):
        return [f"model_options of model {name!r} must be a JSON object (dict) of options, got {options!r:.60}"]
    odd = [key for key in options if not isinstance(key, str)]
    if odd:  # (a checkpoint's dict may have any keys; build_model(**options) would fail with a TypeError)
        return [f"model_options of model {name!r} must be named by text, got the key(s) "
                f"{', '.join(repr(k) for k in odd[:5])}"]
    accepted = _options_of(constructor)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(constructor).parameters.values())
    unknown = sorted(set(options) - set(accepted)) if not takes_any else []
    if unknown:
        return [f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(accepted)}"]
    hints = _hints(constructor)
    ranges = OPTION_RANGES | getattr(constructor, "option_ranges", {})
    problems = []
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            problems.append(f"model_options {key} of model {name!r} must be {_described(hint)}, got {value!r}")
        elif key in ranges and _fits(value, float):
            low, high = ranges[key]
            if not low <= value <= high:
                span = f"{low}" if low == high else f"from {low} to {high}"
                problems.append(f"model_options {key} of model {name!r} must be {span}, got {value!r}")
    return problems


def build_model(name: str, num_classes: int, pretrained: bool = True, **options) -> nn.Module:
    """pretrained=False skips the options that only initialise (restoring from a checkpoint)."""
    problems = model_option_problems(name, options)
    if problems and "has no option" in problems[0]:
        raise UnknownNameError(problems[0])
    if problems:
        raise ConfigError("; ".join(problems))
    if not pretrained:
        for option in ("encoder_weights", "weights", "classifier_init"):
            options.pop(option, None)
    return _constructor(name)(num_classes=num_classes, **options)


__all__ = ["ENCODERS", "MODELS", "SegmentNet", "build_model", "model_from_checkpoint"]


def model_from_checkpoint(state: dict, path) -> nn.Module:
    """The one way a checkpoint becomes a model (inference and resume): its entries checked
    (core.checkpoint.check_checkpoint or inference's checks), the previous release's layout mapped
    (models.legacy), the options checked, the model built without downloading weights, and its weights loaded (load_weights)."""
    options, weights = upgrade(state["model_name"], state.get("model_options", {}), clean_state_dict(state["model"]),
                               path)
    problems = model_option_problems(state["model_name"], options)
    if problems:
        raise DataError(f"checkpoint {path}: {'; '.join(problems)}; the file is corrupt or was not written by "
                        f"SegmentNet")
    model = build_model(state["model_name"], state["num_classes"], pretrained=False, **options)
    load_weights(model, weights, path)
    return model
