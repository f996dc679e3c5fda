"""Step 5: predict masks for images with a trained checkpoint.

    python Predict.py runs/NAME/best.pt photo.jpg more/ 'shots/*.png' --out predictions/
    python Predict.py runs/NAME/best.pt data/voc2012/val/images --masks data/voc2012/val/masks --out pred/
    python Predict.py runs/NAME/best.pt big.jpg --out pred/ --window 512 --flip --scales 0.75,1.0,1.25
    python Predict.py runs/NAME/best.onnx photo.jpg --out pred/   # an Export.py file, through ONNX Runtime

Inputs are image files, folders (their .jpg/.jpeg/.png files) or glob patterns. OUT must be a new or
empty folder, or one Predict.py wrote before; never a folder inside a prepared dataset. For each image:
  OUT/masks/<stem>.png     class indices as a palette PNG (mode 'P'), the format of VOC's SegmentationClass
  OUT/overlays/<stem>.png  the prediction blended over the image
  OUT/panels/<stem>.png    image | truth | prediction, when --masks DIR holds DIR/<stem>.png
From Python: segmentnet.results.inference.run_model(checkpoint, images) returns the masks as arrays.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentnet.core.cli import call_main, stop_cleanly_on_signals
from segmentnet.core.errors import DataError, UsageError
from segmentnet.core.files import claim_folder
from segmentnet.core.outputs import refuse_input_data, writing_into
from segmentnet.datasets.common import read_index_mask
from segmentnet.results.inference import (add_inference_arguments, image_size, load_model, model_device, predict_masks,
                                          read_rgb, resolve_device, tta_from_args)
from segmentnet.results.visualize import overlay, panel, save_mask_png, save_png
from segmentnet.training.data import image_paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by TrainSegmentNet.py, or its export "
                                                      "by Export.py (.onnx: run by ONNX Runtime on the CPU)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="output folder (masks/, overlays/, panels/)")
    parser.add_argument("--masks", type=Path, default=None, help="folder of ground-truth masks <stem>.png, for panels")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (equal sizes only)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def truth_path(masks_dir: Path | None, stem: str) -> Path | None:
    """masks_dir/<stem>.png when there is such a file, else None."""
    path = None if masks_dir is None else masks_dir / f"{stem}.png"
    return path if path is not None and path.is_file() else None


def check_headers(paths: list[Path], masks_dir: Path | None) -> None:
    """Read every image's header (and its mask's) before anything is written: a file that is no image,
    a decompression bomb, or a mask of another size than its image stops the run here, naming the file."""
    for path in paths:
        size = image_size(path)
        mask = truth_path(masks_dir, path.stem)
        if mask is not None and image_size(mask) != size:
            width, height = image_size(mask)
            raise DataError(f"{mask} is {width}x{height} but its image {path} is {size[0]}x{size[1]}; a "
                            f"ground-truth mask must have its image's size. Point --masks at the masks of these "
                            f"images, or leave --masks out")


def read_truth(masks_dir: Path | None, stem: str, num_classes: int) -> object:
    path = truth_path(masks_dir, stem)
    return None if path is None else read_index_mask(path, num_classes)


def main(argv=None) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1 (the number of images to predict), got {args.limit}")
    if args.masks is not None and not args.masks.is_dir():
        raise DataError(f"--masks {args.masks}: no such folder")
    refuse_input_data(args.out, "--out")
    tta = tta_from_args(args)
    paths = image_paths(args.inputs)[: args.limit]
    model, description = load_model(args.checkpoint, resolve_device(args.device))
    device = model_device(model)
    check_headers(paths, args.masks)
    out = claim_folder(args.out, "Predict", "--out")
    palette = description.palette
    panels = 0
    bar = tqdm(total=len(paths), desc="predict", unit="image", disable=args.no_progress)
    with stop_cleanly_on_signals("the masks written so far are whole, the one being written was removed; run "
                                 "Predict.py again"):
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            images = [read_rgb(p) for p in chunk]
            truths = [read_truth(args.masks, p.stem, description.num_classes) for p in chunk]
            predictions = predict_masks(model, images, description.mean, description.std, tta, args.batch_size)
            for path, image, truth, prediction in zip(chunk, images, truths, predictions):
                with writing_into(out, f"masks/{path.stem}.png", "--out") as target:
                    save_mask_png(prediction, palette, target)
                with writing_into(out, f"overlays/{path.stem}.png", "--out") as target:
                    save_png(overlay(image, prediction, palette), target)
                if truth is not None:
                    with writing_into(out, f"panels/{path.stem}.png", "--out") as target:
                        save_png(panel(image, truth, prediction, palette), target)
                    panels += 1
            bar.update(len(chunk))
    bar.close()
    print(f"predicted {len(paths)} image(s) on {device}: masks in {out / 'masks'}, overlays in "
          f"{out / 'overlays'}" + (f", {panels} image|truth|prediction panels in {out / 'panels'}"
                                   if panels else ""))
    if args.masks is not None and panels == 0:
        print(f"warning: no ground-truth mask <stem>.png for these images in {args.masks}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
