"""Step 6: compare training runs on one page.

    python Report.py runs/voc2012-segmentnet-A runs/voc2012-segmentnet-B --out report.html

Writes report.html (self-contained: the pictures are embedded) and its Markdown twin report.md
(pictures in report_files/): a table of the runs (model, parameters, best val mIoU and its epoch,
training time, images per second), their val mIoU and loss curves overlaid, per-class IoU side by
side, and the latest sample grid of each run. Meant for runs trained on the same data.
--out must end in .html; an existing page, twin or pictures folder is replaced only when Report.py
wrote it, and nothing is written inside a prepared dataset. A last line of metrics.jsonl cut short
(a run killed while writing it) is left out, with a note.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentnet.core.cli import call_main, stop_cleanly_on_signals
from segmentnet.results.report import build_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders written by TrainSegmentNet.py")
    parser.add_argument("--out", type=Path, default=Path("report.html"),
                        help="the HTML page, ending in .html (Markdown twin: .md)")
    args = parser.parse_args(argv)
    with stop_cleanly_on_signals("the file being written was removed; run Report.py again"):
        html_path, md_path = build_report(args.runs, args.out)
    print(f"wrote {html_path} and {md_path} ({len(args.runs)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
