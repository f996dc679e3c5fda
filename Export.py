"""Step 6: export a trained checkpoint to ONNX, for inference without PyTorch's training code.

    python Export.py runs/NAME/best.pt                      # runs/NAME/best.onnx, float input
    python Export.py runs/NAME/best.pt --input uint8 --out model.onnx

The file holds the inference model (main logits, no auxiliary heads) with dynamic batch, height and
width, ONNX opset 18 (--opset), and in its metadata the class names, palette, mean and std.
--input float: the client sends normalised float32 NCHW, as the PyTorch model takes it;
--input uint8: the client sends raw RGB uint8 NCHW, and the normalisation runs inside the graph.
The export is verified before it is written: ONNX Runtime and PyTorch run on random images of two
sizes (--check-sizes) and the largest logit difference and the argmax agreement are printed; beyond
1e-4 + 1e-4 * max |logits| the export fails and no file is left. An existing --out is replaced only
when Export.py wrote it. Predict.py and Evaluate.py take the .onnx file wherever they take a checkpoint.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from segmentnet.core.cli import call_main, stop_cleanly_on_signals
from segmentnet.core.errors import UsageError
from segmentnet.deployment.export import OPSET, export_checkpoint
from segmentnet.deployment.onnx_model import INPUT_TYPES


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'384x384,289x481' -> [(1, 384, 384), (2, 289, 481)]: the first size as a batch of 1, the rest of 2."""
    sizes = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"\s*(\d{1,4})x(\d{1,4})\s*", part)
        if not match or min(int(match[1]), int(match[2])) < 2:
            raise argparse.ArgumentTypeError(f"expected sizes HEIGHTxWIDTH (2 to 9999) separated by commas, such as "
                                             f"384x384,289x481; got {part!r}")
        sizes.append((1 if i == 0 else 2, int(match[1]), int(match[2])))
    if len({size[1:] for size in sizes}) < 2:
        raise argparse.ArgumentTypeError(f"expected at least two different sizes HEIGHTxWIDTH (height and width are "
                                         f"dynamic, so the export is checked on two), got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by TrainSegmentNet.py (best.pt, last.pt)")
    parser.add_argument("--out", type=Path, default=None, help="the ONNX file (default: the checkpoint's name, .onnx)")
    parser.add_argument("--input", choices=tuple(INPUT_TYPES), default="float",
                        help="float: normalised float32 input; uint8: raw RGB, normalised inside the graph")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--check-sizes", type=parse_sizes, default=None, metavar="HxW,HxW",
                        help="image sizes of the verification (default: the training crop, and 3/4 x 5/4 of it "
                             "plus one, as a batch of 2)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 13 <= args.opset <= 23:
        raise UsageError(f"--opset must be from 13 to 23 (the opsets torch's exporter writes), got {args.opset}")
    with stop_cleanly_on_signals("the unverified file was removed; run Export.py again"):
        out = export_checkpoint(args.checkpoint, args.out, args.input, args.opset, args.check_sizes)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, input {args.input}); "
          f"predict with: python Predict.py {out} IMAGES... --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
