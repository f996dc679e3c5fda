"""Model registry: a plain dict of name -> constructor(num_classes, **options).

A model returns logits of shape (N, num_classes, H, W) at the input's size. A model with
auxiliary heads returns, in training mode only, a dict {"out": logits, "<aux name>": logits, ...}
and has an attribute `aux_weights` ({"<aux name>": default weight}); the training loop adds the
weighted auxiliary losses. In eval mode every model returns the plain logits tensor.
"""
from __future__ import annotations

import inspect

from torch import nn

from .hypercolumns import hypercolumn_squeezenet, hypercolumn_vgg16
from .segmentnet import SegmentNet

MODELS: dict[str, type[nn.Module]] = {
    "segmentnet": SegmentNet,
    "hypercolumn_vgg16": hypercolumn_vgg16,
    "hypercolumn_squeezenet": hypercolumn_squeezenet,
}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    try:
        constructor = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}") from None
    accepted = [p for p in inspect.signature(constructor).parameters if p not in ("self", "num_classes")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise KeyError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(accepted)}")
    return constructor(num_classes=num_classes, **options)


__all__ = ["MODELS", "SegmentNet", "build_model"]
