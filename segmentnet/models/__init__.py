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

import inspect
import types
import typing
from typing import Callable

from torch import nn

from ..config import is_number
from ..errors import ConfigError, UnknownNameError
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


# The range (inclusive) of each numeric option, for every model that takes it; a model's constructor
# may narrow it with an attribute `option_ranges` of its own (e.g. SqueezeNet's width).
OPTION_RANGES = {
    "width": (1, 1024), "depth": (1, 8), "blocks": (1, 16), "max_width": (1, 8192), "in_channels": (3, 3),
    "fc_width": (1, 16384), "hidden": (0, 16384), "cnn_seed": (0, 2 ** 32 - 1),
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
        for option in ("pretrained_backbone", "classifier_init"):
            options.pop(option, None)
    return _constructor(name)(num_classes=num_classes, **options)


__all__ = ["MODELS", "SegmentNet", "build_model"]
