"""Step 2: extracted raw files -> data/<dataset>/{train,val}/{images,masks}/ + dataset.json.

Every pair is checked (both decodable, same size, labels within the classes or 255). A bad pair
stops the run naming the file, or with --skip-bad is skipped and listed at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentnet.cli import run_main
from segmentnet.datasets import DATASETS, get_dataset
from segmentnet.datasets.common import separate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="voc2012", help=f"one of: {', '.join(sorted(DATASETS))}")
    p.add_argument("--data-dir", default="data", help="reads DATA_DIR/raw, writes DATA_DIR/<dataset>")
    p.add_argument("--skip-bad", action="store_true", help="skip bad pairs and list them instead of stopping")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--force", action="store_true", help="redo a separation that is already complete")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    info = get_dataset(args.dataset)
    summary = separate(info, Path(args.data_dir), skip_bad=args.skip_bad, workers=args.workers, force=args.force)
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
    sys.exit(run_main(main))
