"""Each loss against ce+jaccard on CamVid at the same budget (issue 25's table).

    python bench/loss_table.py --minutes 8                       # every loss below, one after another
    python bench/loss_table.py --minutes 8 --losses ce+jaccard lovasz

Each row is bench/camvid_recipe.py with configs/camvid-cpu.json and `--loss NAME` (nothing else
changed: the recipe's model, crops, class weights and schedule), run one at a time in run folders
OUT/NAME; the table of best.pt's val mIoU at 480x360 (and per class) is printed at the end and
written to OUT/losses.md. Run nothing else meanwhile: the budget is wall-clock time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import camvid_recipe  # noqa: E402

from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.errors import UsageError  # noqa: E402
from segmentnet.core.files import write_text_atomic  # noqa: E402

LOSSES = ["ce+jaccard", "ce", "lovasz", "ce+lovasz", "dice", "ce+dice", "focal"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of each training")
    p.add_argument("--losses", nargs="+", default=LOSSES, help="losses to compare (the first is the reference)")
    p.add_argument("--out", default="runs/losses", help="folder of the run folders")
    p.add_argument("--config", default="configs/camvid-cpu.json", help="the recipe's config")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = []
    for loss in args.losses:
        run = out / loss.replace("+", "-")
        if (run / "recipe.json").is_file():  # a rerun skips what is measured already, at the same budget
            budget = json.loads((run / "config.json").read_text()).get("time_budget")
            if budget != args.minutes:
                raise UsageError(f"{run} was measured with {budget} minutes, not {args.minutes:g}: give another --out")
        elif camvid_recipe.main(["--config", args.config, "--minutes", str(args.minutes), "--tag", loss,
                                 "--out", str(run), "--", "--loss", loss]):
            raise UsageError(f"the {loss} run in {run} failed; the table is not complete")
        rows.append(json.loads((run / "recipe.json").read_text()))
    classes = list(rows[0]["scores"]["val"]["per_class_iou"])
    lines = [f"| loss | epochs in {args.minutes:g} min | train img/s | val mIoU | pixel acc | "
             + " | ".join(classes) + " |", "|---" * (5 + len(classes)) + "|"]
    for r in rows:
        val = r["scores"]["val"]
        lines.append(f"| {r['loss']} | {r['epochs']} | {r['images_per_second']:.1f} | {val['miou']:.3f} | "
                     f"{val['pixel_acc']:.3f} | " + " | ".join(
                         "-" if val["per_class_iou"][c] is None else f"{val['per_class_iou'][c]:.2f}"
                         for c in classes) + " |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "losses.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
