"""Step 4: score a checkpoint on a split of the dataset it was trained on.

    python Evaluate.py runs/NAME/best.pt                        # val split, data dir of the training
    python Evaluate.py runs/NAME/best.pt --flip --scales 0.75,1.0,1.25
    python Evaluate.py runs/NAME/best.pt --window 512 --stride 341 --data-dir /data --out results/
    python Evaluate.py runs/NAME/best.onnx                      # the export (Export.py), through ONNX Runtime

Prints mIoU, per-class IoU and accuracy, pixel accuracy, mean class accuracy and frequency-weighted
IoU, and writes them with the confusion matrix to eval-<checkpoint>-<split>[-<tta>].json and .md
next to the checkpoint (or in --out); for an ONNX file eval-<name>-onnx-<split>[-<tta>]. A class absent from both truth and prediction has no IoU:
it is left out of the mean and listed. An existing file of that name is replaced only when Evaluate.py
wrote it (its first line says so); nothing is ever written inside a prepared dataset.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from segmentnet.core.cli import call_main, stop_cleanly_on_signals
from segmentnet.core.errors import UsageError
from segmentnet.core.outputs import folder_not_file
from segmentnet.results.evaluation import evaluation_paths, evaluation_table, write_evaluation
from segmentnet.results.inference import add_inference_arguments, evaluate_checkpoint, resolve_device, tta_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by TrainSegmentNet.py (best.pt, last.pt), "
                                                           "or its export by Export.py (.onnx)")
    parser.add_argument("--data-dir", default=None, help="folder of prepared datasets (default: the training's)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and Markdown (default: the checkpoint's)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.split):
        raise UsageError(f"--split must be the name of a split such as val or train, got {args.split!r}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0 (0: load in the main process), got {args.workers}")
    tta = tta_from_args(args)
    out_dir = folder_not_file(args.out or args.checkpoint.parent, "--out")
    name = args.checkpoint.stem + ("-onnx" if args.checkpoint.suffix.lower() == ".onnx" else "")
    paths = evaluation_paths(out_dir, f"eval-{name}-{args.split}{tta.tag}")  # refused before the work
    with stop_cleanly_on_signals("the file being written was removed; run Evaluate.py again"):
        result = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, tta, resolve_device(args.device),
                                     workers=args.workers, progress=not args.no_progress)
        print(evaluation_table(result))
        json_path, md_path = write_evaluation(result, paths)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
