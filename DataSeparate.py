"""Step 2: extracted raw files -> data/<dataset>/{train,val}/{images,masks}/ + dataset.json.

Every pair is checked (both decodable, same size, labels within the classes or 255; colour masks
where indices are expected, 0/255 masks where 0/1 are expected, images without masks are named as
such). A bad pair stops the run naming the file and the fix, or with --skip-bad is skipped and
listed at the end. SIGTERM or SIGHUP stops it leaving nothing behind (exit status 128 + signal);
a run killed outright leaves a hidden .<dataset>.partial-* folder that the next run removes.

    python DataSeparate.py --dataset cityscapes
    python DataSeparate.py --dataset kitti_road --val-fraction 0.15 --split-seed 0
    python DataSeparate.py --dataset pets --images photos/ --masks masks/ [--classes classes.json]

Your own data (--images, --masks): pairs by file name, masks of values, 0/255 or 0/1 binary, or
colours (with --classes), in-between values snapped, images of any mode made RGB; every decision is
printed and kept in dataset.json (segmentnet/datasets/own.py). Your folders are only read.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from segmentnet.core.cli import call_main, stop_cleanly_on_signals
from segmentnet.core.errors import UsageError
from segmentnet.core.files import plain_name
from segmentnet.core.outputs import writing
from segmentnet.datasets import DATASETS, get_dataset
from segmentnet.datasets.exports import render_coco, render_labelme
from segmentnet.datasets.labels import read_classes
from segmentnet.datasets.own import SNAP_LIMIT, Options, folder_splits, own_dataset
from segmentnet.datasets.separate import partial_folder, separate
from segmentnet.preparation.archive import Archive
from segmentnet.preparation.extraction import extract


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="voc2012", help=f"one of: {', '.join(sorted(DATASETS))}")
    p.add_argument("--data-dir", default="data", help="reads DATA_DIR/raw, writes DATA_DIR/<dataset>")
    p.add_argument("--skip-bad", action="store_true", help="skip bad pairs and list them instead of stopping")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--force", action="store_true", help="redo a separation that is already complete")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="datasets without an official validation split (kitti_road): the fraction of each "
                        "category held out for validation (default 0.15)")
    p.add_argument("--split-seed", type=int, default=None, help="seed of that validation split (default 0)")
    own = p.add_argument_group("your own data (instead of an official archive; --dataset names it)")
    own.add_argument("--images", type=Path, help="folder of your images")
    own.add_argument("--masks", type=Path, help="folder of their masks (paired by file name)")
    own.add_argument("--labelme", type=Path, help="folder of LabelMe's JSON files (and their images)")
    own.add_argument("--coco", type=Path, help="COCO instances JSON over the images of --images")
    own.add_argument("--cvat", type=Path, help="CVAT's 'Segmentation mask 1.1' export: its zip or its folder")
    own.add_argument("--classes", type=Path, help='JSON: {"classes": [{"name": "pet", "value": 1}, ...], "ignore": [..]}')
    own.add_argument("--val-images", type=Path, help="a validation split of your own (with --val-masks)")
    own.add_argument("--val-masks", type=Path)
    own.add_argument("--test-images", type=Path, help="unlabelled images, prepared as the split test")
    own.add_argument("--skip-unpaired", action="store_true", help="leave out images without a mask and the reverse")
    own.add_argument("--resize-masks", action="store_true",
                     help="resize masks of another size but the image's aspect ratio (nearest neighbour)")
    own.add_argument("--snap-limit", type=float, default=SNAP_LIMIT,
                     help=f"share of mask pixels that may be snapped to the nearest class (default {SNAP_LIMIT})")
    return p


def dataset_options(args) -> dict:
    """The dataset options given on the command line (those left out keep the dataset's defaults)."""
    given = {"val_fraction": args.val_fraction, "split_seed": args.split_seed}
    return {name: value for name, value in given.items() if value is not None}


def own_source(args) -> str | None:
    """'folders', 'labelme', 'coco' or 'cvat' for your own data (None: an official dataset), its flags
    and the new name --dataset checked before anything is made."""
    given = [flag for flag, value in (("--masks", args.masks), ("--labelme", args.labelme), ("--coco", args.coco),
                                      ("--cvat", args.cvat)) if value is not None]
    if not given and args.images is None:
        return None
    if len(given) != 1 or (args.images is None and given[0] in ("--masks", "--coco")) or (
            args.images is not None and given[0] == "--labelme"):
        raise UsageError("give --images with --masks (folders), --images with --coco (a COCO JSON), --cvat (its "
                         "export, with --images when it holds no JPEGImages/), or --labelme alone (LabelMe's files)")
    if args.dataset in DATASETS:
        raise UsageError(f"--dataset {args.dataset} is a built-in dataset; name your own data otherwise, e.g. "
                         f"--dataset pets (it becomes data/pets/)")
    plain_name(args.dataset, "--dataset")
    return {"--masks": "folders", "--labelme": "labelme", "--coco": "coco", "--cvat": "cvat"}[given[0]]


def own_data(args, source: str, said: list[str], work: Path):
    """(DatasetInfo, options) of your own data under the new name --dataset; an export's masks are
    drawn into `work`."""
    opt = Options(source, args.images, args.masks or args.labelme or args.coco or args.cvat, args.classes,
                  args.val_images, args.val_masks, args.test_images,
                  0.15 if args.val_fraction is None else args.val_fraction, args.split_seed or 0, args.skip_unpaired,
                  args.resize_masks, args.snap_limit)  # (as dataset.json records them)
    read = opt
    if source == "cvat":  # its masks and labelmap.txt, its images unless --images
        root = cvat_folder(args.cvat, work)
        read = dataclasses.replace(opt, images=args.images or root / "JPEGImages", masks=root / "SegmentationClass",
                                   classes=args.classes or root / "labelmap.txt")
    classes = read_classes(read.classes) if read.classes else None
    if source in ("folders", "cvat"):
        splits = folder_splits(read, said)
        folders = tuple(Path(f) for f in (read.images, read.masks, read.val_images, read.val_masks) if f is not None)
    else:
        if args.classes or args.val_images:
            raise UsageError(f"--{source} takes its classes and images from the export: leave out --classes and "
                             f"--val-images (a random share becomes the validation split)")
        pairs, classes = (render_labelme(args.labelme, work, said) if source == "labelme"
                          else render_coco(args.coco, args.images, work, said))
        splits = {"train": pairs}
        folders = (work, args.labelme if source == "labelme" else args.images)
    return own_dataset(args.dataset, splits, opt, folders, classes, said)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    said = []
    source = own_source(args)
    with stop_cleanly_on_signals("nothing was written; run DataSeparate.py again"), ExitStack() as stack:
        if source is not None:
            drawn = source != "folders"
            work = stack.enter_context(drawing_folder(Path(args.data_dir), args.dataset)) if drawn else None
            info, options = own_data(args, source, said, work)
        else:
            info, options = get_dataset(args.dataset), dataset_options(args)
        summary = separate(info, Path(args.data_dir), skip_bad=args.skip_bad, workers=args.workers,
                           force=args.force, options=options)
    out = Path(args.data_dir) / info.name
    if summary.get("already_done"):
        print(f"{out} is already complete ({summary['counts']}); nothing to do (--force redoes it)")
        return 0
    print(f"wrote {out}: " + ", ".join(f"{split} {n}" for split, n in summary["counts"].items()))
    for line in said + class_shares(summary):
        print(f"  {line}")
    for item in summary["skipped"]:
        print(f"skipped {item['split']}/{item['stem']}: {item['error']}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} bad pair(s) skipped")
    return 0


def cvat_folder(path: Path, work: Path) -> Path:
    """The folder of a CVAT export: itself, or its zip extracted into `work` with every archive check."""
    if path.is_dir():
        return path
    extract(path, work / "cvat", Archive(path.name, None, None, "SegmentationClass/"))
    return work / "cvat"


@contextmanager
def drawing_folder(data_dir: Path, name: str):
    """A hidden .<name>.partial-* folder beside data/<name> for the masks drawn from an export, removed
    at the end (a run killed outright leaves it to the next run, as a separation's own partial folder)."""
    with writing(data_dir):
        data_dir.mkdir(parents=True, exist_ok=True)
        folder = partial_folder(data_dir, name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def class_shares(summary: dict) -> list[str]:
    """'train pixels: background 71.2%, person 28.8%' for each labelled split."""
    lines = []
    for split, counts in summary.get("pixel_counts", {}).items():
        total = sum(counts)
        if total:
            lines.append(f"{split} pixels: " + ", ".join(f"{name} {100 * n / total:.1f}%"
                                                         for name, n in zip(summary["classes"], counts)))
    return lines


if __name__ == "__main__":
    sys.exit(call_main(main))
