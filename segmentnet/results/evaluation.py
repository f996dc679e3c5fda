"""Evaluate's results as text: the terminal table, the JSON (with the full confusion matrix) and the
Markdown of one evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.files import write_text_atomic
from ..core.outputs import check_replaceable, json_signed, signature, writing

ABSENT_RULE = ("a class absent from both truth and prediction (union 0) has no IoU: it is left out of the mean "
               "and listed as absent")


def class_rows(result: dict) -> list[dict]:
    """Per class: name, IoU (None when absent), accuracy (None without truth pixels), pixel counts."""
    confusion = np.asarray(result["confusion"], dtype=np.int64)
    truth, predicted, correct = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    rows = []
    for index, name in enumerate(result["classes"]):
        rows.append({"index": index, "name": name, "iou": result["per_class_iou"][index],
                     "acc": float(correct[index] / truth[index]) if truth[index] else None,
                     "truth_pixels": int(truth[index]), "predicted_pixels": int(predicted[index])})
    return rows


def fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def describe_evaluation(result: dict) -> str:
    tta = result["tta"]
    views = ["flip"] if tta["flip"] else []
    if tta["scales"] != [1.0]:
        views.append("scales " + ",".join(f"{s:g}" for s in tta["scales"]))
    if tta["window"]:
        views.append(f"sliding window {tta['window']} stride {tta['stride']}")
    return (f"{result['checkpoint']} ({result['model']}, epoch {result['epoch']}) on {result['dataset']} "
            f"{result['split']}, {result['images']} images; test-time augmentation: {', '.join(views) or 'none'}")


def summary_lines(result: dict) -> list[str]:
    absent = [result["classes"][i] for i in result["absent_classes"]]
    present = len(result["classes"]) - len(absent)
    return [f"mIoU {result['miou']:.4f} (mean over the {present} present classes)",
            f"pixel accuracy {result['pixel_acc']:.4f}, mean class accuracy {result['mean_class_acc']:.4f}, "
            f"frequency-weighted IoU {result['fw_iou']:.4f}",
            f"absent classes ({len(absent)}): {', '.join(absent) or 'none'}",
            f"rule: {ABSENT_RULE}"]


def evaluation_table(result: dict) -> str:
    """The console table: one line per class, absent classes marked, then the summary."""
    rows = class_rows(result)
    width = max(len(r["name"]) for r in rows) + 2
    lines = [describe_evaluation(result), "",
             f"{'class':<{width}}{'IoU':>8}{'acc':>8}{'truth px':>12}{'predicted px':>14}"]
    for r in rows:
        iou = "absent" if r["iou"] is None else f"{r['iou']:.4f}"
        lines.append(f"{r['name']:<{width}}{iou:>8}{fmt(r['acc']):>8}{r['truth_pixels']:>12}{r['predicted_pixels']:>14}")
    return "\n".join(lines + [""] + summary_lines(result))


def evaluation_markdown(result: dict) -> str:
    rows = class_rows(result)
    lines = [f"<!-- {signature('Evaluate')} -->", "", "# Evaluation", "", describe_evaluation(result), ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    lines += ["", "| class | IoU | accuracy | truth pixels | predicted pixels |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        iou = "absent" if r["iou"] is None else f"{r['iou']:.4f}"
        lines.append(f"| {r['name']} | {iou} | {fmt(r['acc'])} | {r['truth_pixels']} | {r['predicted_pixels']} |")
    shown = [r["index"] for r in rows if r["iou"] is not None]
    names = [result["classes"][i] for i in shown]
    lines += ["", "Confusion matrix (pixels; rows: truth, columns: prediction; absent classes left out):", "",
              "| truth \\ prediction | " + " | ".join(names) + " |", "|---" * (len(shown) + 1) + "|"]
    for i in shown:
        lines.append(f"| {result['classes'][i]} | " + " | ".join(str(result["confusion"][i][j]) for j in shown) + " |")
    return "\n".join(lines) + "\n"


def write_text(text: str, path) -> None:
    with writing(path) as target:
        write_text_atomic(target, text)


def evaluation_paths(out_dir, stem: str) -> tuple[Path, Path]:
    """(out_dir/stem.json, out_dir/stem.md), each new or Evaluate's own; DataError naming any other."""
    out_dir = Path(out_dir)
    return (check_replaceable(out_dir / f"{stem}.json", "Evaluate"),
            check_replaceable(out_dir / f"{stem}.md", "Evaluate"))


def write_evaluation(result: dict, paths: tuple[Path, Path]) -> tuple[Path, Path]:
    """The JSON (everything, with the full confusion matrix) and the Markdown at evaluation_paths()."""
    json_path, md_path = (check_replaceable(p, "Evaluate") for p in paths)
    write_text(json_signed(result | {"absent_rule": ABSENT_RULE}, "Evaluate"), json_path)
    write_text(evaluation_markdown(result), md_path)
    return json_path, md_path
