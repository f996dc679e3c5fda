"""The CamVid CPU recipe, measured: train, score best.pt at native size, draw the curve.

    python bench/camvid_recipe.py                                   # configs/camvid-cpu.json, as in the README
    python bench/camvid_recipe.py --minutes 10 --tag ce -- --loss ce   # a variant on a shorter budget

It runs TrainSegmentNet.py with the recipe's config (arguments after `--` override it, as on
TrainSegmentNet's command line), timing the whole run by the wall clock, then scores best.pt with
Evaluate's code on the val split (and the test split where the dataset has one) at the native
480x360, and writes into the run folder:

    recipe.png   val mIoU against minutes since the start of training
    recipe.md    wall-clock, final and best val mIoU, per-class IoU of best.pt, images/s
    recipe.json  the same figures, for bench/RESULTS.md's comparison table

and prints recipe.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import TrainSegmentNet  # noqa: E402
from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.errors import UsageError  # noqa: E402
from segmentnet.core.files import write_text_atomic  # noqa: E402
from segmentnet.results.inference import evaluate_checkpoint  # noqa: E402
from segmentnet.results.visualize import pyplot, read_metrics  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/camvid-cpu.json", help="the recipe's TrainSegmentNet config")
    p.add_argument("--minutes", type=float, default=None, help="override the config's time_budget")
    p.add_argument("--out", default="", help="run folder (default runs/camvid-cpu-<tag>-<time>)")
    p.add_argument("--tag", default="recipe", help="a short name of this variant, for the tables")
    p.add_argument("train_args", nargs="*", help="after --: TrainSegmentNet flags that override the config")
    return p


def curve(records: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    minutes = [r["elapsed_seconds"] / 60 for r in records]
    ax.plot(minutes, [r["val_miou"] for r in records], marker=".", label="val mIoU")
    ax.set_xlabel("minutes since the start of training (validation included)")
    ax.set_ylabel("val mIoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"runs/camvid-cpu-{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    train_argv = ["--config", args.config, "--out", str(out), "--progress", "false", *args.train_args]
    if args.minutes is not None:
        train_argv += ["--time-budget", str(args.minutes)]
    started = time.time()
    status = TrainSegmentNet.main(train_argv)
    wall = time.time() - started
    if status:
        raise UsageError(f"the training stopped with status {status}; nothing was measured")
    records = read_metrics(out / "metrics.jsonl")
    config = json.loads((out / "config.json").read_text())
    scores = {split: evaluate_checkpoint(out / "best.pt", split=split, workers=0, progress=False)
              for split in ("val", "test") if (Path(config["data_dir"]) / config["dataset"] / split / "masks").is_dir()}
    best = scores["val"]
    summary = {
        "tag": args.tag, "run": str(out), "train_args": args.train_args, "wall_minutes": wall / 60,
        "epochs": records[-1]["epoch"], "final_val_miou": records[-1]["val_miou"],
        "best_val_miou": max(r["val_miou"] for r in records),
        "best_epoch": max(records, key=lambda r: r["val_miou"])["epoch"],
        "images_per_second": sum(r["images_per_second"] for r in records[1:]) / max(len(records) - 1, 1),
        "scores": {split: {"miou": s["miou"], "pixel_acc": s["pixel_acc"],
                           "per_class_iou": dict(zip(s["classes"], s["per_class_iou"]))}
                   for split, s in scores.items()},
        "model": config["model"], "model_options": config["model_options"], "loss": config["loss"],
    }
    lines = [f"# CamVid recipe `{args.tag}` ({out})", "",
             f"- wall-clock of TrainSegmentNet.py: {summary['wall_minutes']:.1f} min, {summary['epochs']} epochs, "
             f"{summary['images_per_second']:.1f} training images/s (validated epochs after the first)",
             f"- val mIoU: final {summary['final_val_miou']:.4f}, best {summary['best_val_miou']:.4f} "
             f"(epoch {summary['best_epoch']})"]
    for split, s in summary["scores"].items():
        lines.append(f"- best.pt on {split} at 480x360: mIoU {s['miou']:.4f}, pixel accuracy {s['pixel_acc']:.4f}")
    lines += ["", "| class | " + " | ".join(summary["scores"]) + " |", "|---" * (len(summary["scores"]) + 1) + "|"]
    for name in best["classes"]:
        lines.append(f"| {name} | " + " | ".join(
            "absent" if s["per_class_iou"][name] is None else f"{s['per_class_iou'][name]:.3f}"
            for s in summary["scores"].values()) + " |")
    text = "\n".join(lines) + "\n"
    curve(records, out / "recipe.png", f"CamVid, {config['model']} {json.dumps(config['model_options'])}, "
                                       f"{config['loss']}")
    write_text_atomic(out / "recipe.md", text)
    write_text_atomic(out / "recipe.json", json.dumps(summary, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
