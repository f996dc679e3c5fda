"""Checkpoints of the release before torchvision encoders (commit 9c71f37 and earlier): its hand-written
VGG and ResNet had torchvision's key layout under other prefixes, so their weights map onto the
composition's keys as they are. Its classic U-Net (`unet` with inc/down/up/fuse) has no counterpart,
nor have its narrow ResNets (option `width`, which only VGG keeps): the error says which release
wrote them and what to do.
"""
from __future__ import annotations

from ..core.errors import DataError

# torchvision's segmentation models' keys -> ours (the first prefix that matches); the earlier
# release's fcn_resnet*/deeplabv3_resnet* had torchvision's keys too
TORCHVISION_KEYS = (("backbone.", "encoder.layers."), ("classifier.4.", "head."), ("classifier.", "decoder.layers."),
                    ("aux_classifier.", "aux_heads.aux."))


def renamed(state: dict, prefixes) -> dict:
    """The state_dict with each key's first matching prefix (old, new) replaced."""
    out = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out

LAST_RELEASE = "9c71f37"  # the last commit whose models were written by hand
# Per model: (a key only that release's layout has, its prefix -> ours in order; the first match wins)
OLD_LAYOUTS = {
    **{name: ("backbone.features.0.weight", (("backbone.features.", "encoder.layers."), ("", "decoder.")))
       for name in ("fcn32s", "fcn16s", "fcn8s")},
    "segnet": ("encoder.features.0.weight", (("encoder.features.", "encoder.layers."), ("decoder.", "decoder.stages."))),
    "icnet": ("backbone.conv1.weight", (("backbone.", "encoder.layers."), ("classifier.", "head."), ("", "decoder."))),
    **{name: ("backbone.conv1.weight", TORCHVISION_KEYS)
       for name in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")},
    **{name: ("features.0.weight", (("features.", "encoder.layers."), ("classifier.", "decoder.classifier.")))
       for name in ("hypercolumn_vgg16", "hypercolumn_squeezenet")},
}
RENAMED_OPTIONS = {"backbone": "encoder"}
WIDTH_MODELS = ("fcn32s", "fcn16s", "fcn8s", "segnet", "hypercolumn_vgg16")  # VGG's width is still an option
DROPPED_OPTIONS = ("pretrained_backbone",)  # initialisation only: the checkpoint holds the weights


def upgrade(name: str, options: dict, state_dict: dict, path) -> tuple[dict, dict]:
    """(options, state_dict) of an earlier release's checkpoint in this release's form; others unchanged."""
    if name == "unet" and "inc.0.0.weight" in state_dict:
        raise DataError(f"checkpoint {path} holds the classic U-Net of release {LAST_RELEASE} and before; this "
                        f"release's unet is a decoder over a torchvision encoder. Retrain it, or use it with that "
                        f"release (git checkout {LAST_RELEASE})")
    layout = OLD_LAYOUTS.get(name)
    if layout is None or layout[0] not in state_dict:
        return options, state_dict
    if options.get("width", 64) != 64 and name not in WIDTH_MODELS:
        raise DataError(f"checkpoint {path} holds a {name} of width {options['width']} (release {LAST_RELEASE} "
                        f"and before); this release builds torchvision's models at their own width only. Retrain "
                        f"it, or use it with that release (git checkout {LAST_RELEASE})")
    options = {RENAMED_OPTIONS.get(k, k): v for k, v in options.items()
               if k not in DROPPED_OPTIONS and (k != "width" or name in WIDTH_MODELS)}
    return options, renamed(state_dict, layout[1])
