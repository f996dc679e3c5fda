"""Print the markdown tables of the models: every decoder over every encoder it fits, and the named models,
with parameters and forward GFLOPs at 512x512.

    python bench/model_table.py [--size 512] [--classes 21]

Counts at default settings (aux heads on where a named model has them, though the forward pass is
counted in eval mode, without them). GFLOPs come from torch.utils.flop_counter.FlopCounterMode,
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

from segmentnet.models import ENCODERS, MODELS, build_model  # noqa: E402
from segmentnet.models.compose import DECODERS  # noqa: E402

NAMED = {
    "segmentnet": "this project (residual U-Net-style FCN)",
    "fcn32s": "Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation, CVPR 2015",
    "fcn16s": "Long, Shelhamer, Darrell, CVPR 2015",
    "fcn8s": "Long, Shelhamer, Darrell, CVPR 2015",
    "segnet": "Badrinarayanan, Kendall, Cipolla: SegNet, TPAMI 2017",
    "icnet": "Zhao, Qi, Shen, Shi, Jia: ICNet, ECCV 2018",
    "fcn_resnet50": "Long et al. 2015 head on a dilated ResNet-50, as torchvision",
    "fcn_resnet101": "Long et al. 2015 head on a dilated ResNet-101, as torchvision",
    "deeplabv3_resnet50": "Chen, Papandreou, Schroff, Adam: Rethinking Atrous Convolution (DeepLabV3), 2017",
    "deeplabv3_resnet101": "Chen et al. 2017 (DeepLabV3)",
    "hypercolumn_vgg16": "Hariharan, Arbelaez, Girshick, Malik: Hypercolumns, CVPR 2015",
    "hypercolumn_squeezenet": "Hariharan et al. 2015 on SqueezeNet 1.1 (Iandola et al. 2016)",
}


def measure(name: str, num_classes: int, size: int, **options) -> tuple[int, float]:
    """(parameters, forward FLOPs) of a model at default settings, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(name, num_classes, **options).eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return params, counter.get_total_flops()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    parser.add_argument("--classes", type=int, default=21, help="number of classes")
    args = parser.parse_args(argv)
    print(f"Decoders over encoders (`--model DECODER --model-options '{{\"encoder\": \"ENCODER\"}}'`): "
          f"params (M) / GFLOPs at {args.size}x{args.size}; output stride 32 where the encoder cannot dilate\n")
    print("| encoder | " + " | ".join(f"{d} (OS {DECODERS[d].output_stride})" for d in DECODERS) + " |")
    print("|---|" + "---:|" * len(DECODERS))
    for encoder in ENCODERS:
        cells = []
        for decoder in DECODERS:
            spec, default = ENCODERS[encoder], DECODERS[decoder].output_stride
            stride = default if spec.dilatable or default >= spec.stride else 32
            params, flops = measure(decoder, args.classes, args.size, encoder=encoder, output_stride=stride)
            actual = min(stride, spec.stride)
            cells.append(f"{params / 1e6:.1f} / {flops / 1e9:.0f}" + ("" if actual == default else f" (OS {actual})"))
        print(f"| {encoder} | " + " | ".join(cells) + " |")
    print("\n| decoder | paper |\n|---|---|")
    for decoder, spec in DECODERS.items():
        print(f"| {decoder} | {spec.paper} |")
    print("\n| encoder | paper |\n|---|---|")
    for encoder, spec in ENCODERS.items():
        print(f"| {encoder} | {spec.paper} |")
    print(f"\nNamed models\n\n| model | params (M) | GFLOPs at {args.size}x{args.size} | paper |\n|---|---:|---:|---|")
    for name in MODELS:
        if name in NAMED:
            params, flops = measure(name, args.classes, args.size)
            print(f"| {name} | {params / 1e6:.2f} | {flops / 1e9:.1f} | {NAMED[name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
