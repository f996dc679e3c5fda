"""Print the markdown table of the registered models: parameters and forward GFLOPs at 512x512.

    python bench/model_table.py [--size 512] [--classes 21]

Counts at default settings (papers' widths, aux heads on where a model has them, though the forward
pass is counted in eval mode, without them). GFLOPs come from torch.utils.flop_counter.FlopCounterMode,
which counts 2 FLOPs per multiply-accumulate of convolutions and matrix products (normalisation,
activations, pooling and interpolation are not counted). The models are built on the meta device,
so nothing is computed and no memory is allocated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.models import MODELS, build_model  # noqa: E402
from segmentnet.models.pretrained import BACKBONE_FILES  # noqa: E402

PAPERS = {
    "segmentnet": ("-", "this project (residual U-Net-style FCN)"),
    "fcn32s": ("vgg16", "Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"),
    "fcn16s": ("vgg16", "Long, Shelhamer, Darrell, CVPR 2015"),
    "fcn8s": ("vgg16", "Long, Shelhamer, Darrell, CVPR 2015"),
    "unet": ("-", "Ronneberger, Fischer, Brox: U-Net, MICCAI 2015 (same padding, batch norm)"),
    "segnet": ("vgg16_bn", "Badrinarayanan, Kendall, Cipolla: SegNet, TPAMI 2017"),
    "icnet": ("resnet50", "Zhao, Qi, Shen, Shi, Jia: ICNet, ECCV 2018"),
    "fcn_resnet50": ("resnet50", "Long et al. 2015 head on a dilated ResNet-50 (He et al. 2016), as torchvision"),
    "fcn_resnet101": ("resnet101", "Long et al. 2015 head on a dilated ResNet-101, as torchvision"),
    "deeplabv3_resnet50": ("resnet50", "Chen, Papandreou, Schroff, Adam: Rethinking Atrous Convolution (DeepLabV3), 2017"),
    "deeplabv3_resnet101": ("resnet101", "Chen et al. 2017 (DeepLabV3)"),
    "hypercolumn_vgg16": ("vgg16", "Hariharan, Arbelaez, Girshick, Malik: Hypercolumns, CVPR 2015"),
    "hypercolumn_squeezenet": ("squeezenet1_1", "Hariharan et al. 2015 on SqueezeNet 1.1 (Iandola et al. 2016)"),
}


def measure(name: str, num_classes: int, size: int) -> tuple[int, float]:
    """(parameters, forward FLOPs) of a model at default settings, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(name, num_classes).eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return params, counter.get_total_flops()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    parser.add_argument("--classes", type=int, default=21, help="number of classes")
    args = parser.parse_args(argv)
    print(f"| model | params (M) | GFLOPs at {args.size}x{args.size} | backbone file (`pretrained_backbone: true`) | paper |")
    print("|---|---:|---:|---|---|")
    for name in MODELS:
        params, flops = measure(name, args.classes, args.size)
        arch, paper = PAPERS.get(name, ("-", "-"))
        backbone = f"{BACKBONE_FILES[arch]}" if arch in BACKBONE_FILES else "none (from scratch)"
        print(f"| {name} | {params / 1e6:.2f} | {flops / 1e9:.1f} | {backbone} | {paper} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
