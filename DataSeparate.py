"""Step 2: extracted raw files -> data/<dataset>/{train,val}/{images,masks}/ + dataset.json.

Every pair is checked (both decodable, same size, labels within the classes or 255; colour masks
where indices are expected, 0/255 masks where 0/1 are expected, images without masks are named as
such). A bad pair stops the run naming the file and the fix, or with --skip-bad is skipped and
listed at the end. SIGTERM or SIGHUP stops it leaving nothing behind (exit status 128 + signal);
a run killed outright leaves a hidden .<dataset>.partial-* folder that the next run removes.

    python DataSeparate.py --dataset cityscapes
    python DataSeparate.py --dataset kitti_road --val-fraction 0.15 --split-seed 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentnet.cli import call_main, stop_cleanly_on_signals
from segmentnet.datasets import DATASETS, get_dataset
from segmentnet.datasets.separate import separate


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
    return p


def dataset_options(args) -> dict:
    """The dataset options given on the command line (those left out keep the dataset's defaults)."""
    given = {"val_fraction": args.val_fraction, "split_seed": args.split_seed}
    return {name: value for name, value in given.items() if value is not None}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    info = get_dataset(args.dataset)
    with stop_cleanly_on_signals("nothing was written; run DataSeparate.py again"):
        summary = separate(info, Path(args.data_dir), skip_bad=args.skip_bad, workers=args.workers,
                           force=args.force, options=dataset_options(args))
    out = Path(args.data_dir) / info.name
    if summary.get("already_done"):
        print(f"{out} is already complete ({summary['counts']}); nothing to do (--force redoes it)")
        return 0
    print(f"wrote {out}: " + ", ".join(f"{split} {n}" for split, n in summary["counts"].items()))
    for item in summary["skipped"]:
        print(f"skipped {item['split']}/{item['stem']}: {item['error']}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} bad pair(s) skipped")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
