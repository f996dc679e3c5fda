"""Report.py's comparison of training runs: curves, per-class IoU, a table of the runs (HTML + Markdown).
(Evaluate's table, JSON and Markdown of one evaluation: evaluation.py.)"""
from __future__ import annotations

import base64
import html
import io
import statistics
from pathlib import Path

import numpy as np

from ..core.errors import DataError, UsageError
from ..core.files import atomic_path, check_claimable, check_inside, claim_folder, is_regular, read_json, read_regular
from ..core.outputs import check_replaceable, refuse_input_data, signature, writing_into
from ..planning.rules import PLAN_FILE, choice_rows
from .evaluation import fmt, write_text
from .visualize import epoch_axis, pyplot, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_GRID_BYTES = 1 << 26  # a sample grid of a few images: far below this


def load_run(run_dir) -> dict:
    """What the report shows of one run folder: config, metrics, parameter count, classes, latest grid."""
    from .inference import count_parameters, load_model

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise DataError(f"{run_dir} is not a finished training run: no epochs in {run_dir / 'metrics.jsonl'} "
                        f"(give the run folders that TrainSegmentNet.py wrote)")
    check_records(records, run_dir / "metrics.jsonl")
    config = read_run_config(run_dir / "config.json")
    checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).exists()), None)
    parameters, classes = None, None
    if checkpoint is not None:
        model, description = load_model(checkpoint)
        parameters = count_parameters(model)
        classes = description.classes
    best = max(records, key=lambda r: r["val_miou"])
    grid = latest_grid(run_dir)
    return {
        "dir": run_dir, "config": config, "records": records, "best": best, "parameters": parameters,
        "model": str(config.get("model", "?")), "model_options": config.get("model_options", {}),
        "dataset": str(config.get("dataset", "?")), "data_dir": str(config.get("data_dir", "?")),
        "classes": classes or [str(i) for i in range(len(best["val_per_class_iou"]))],
        "train_seconds": training_seconds(records),
        "images_per_second": statistics.median(r.get("images_per_second", float("nan")) for r in records),
        "grid": grid,
        "plan": read_plan(run_dir / PLAN_FILE),
    }


def read_plan(path: Path) -> list[tuple[str, str]]:
    """The choices of an auto run's plan.json as (settings, reason) rows; [] without one. A plan.json
    that is not a JSON object of choices is named, as a damaged config.json is."""
    if not path.exists():
        return []
    try:
        plan = read_json(path, "the run's plan")
    except (OSError, ValueError, DataError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc}): check that you may read it, or restore it from "
                        f"a copy of the run, or delete it (the report then shows no plan)") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("choices"), list):
        raise DataError(f"{path} is not a training plan (a JSON object with a list of choices); restore it from a "
                        f"copy of the run, or delete it")
    return choice_rows(plan["choices"])


def latest_grid(run_dir: Path) -> tuple[str, bytes] | None:
    """(name, bytes) of the run's latest sample grid, samples/epoch_NNN.png, or None. The page embeds
    it, so only a PNG that lies in the run folder as a regular file is taken: a link planted there
    (e.g. to ~/.ssh/id_rsa) would put the file it leads to into the page."""
    grids = sorted(p for p in (run_dir / "samples").glob("epoch_*.png") if not p.is_symlink() and is_regular(p))
    if not grids:
        return None
    try:
        data = read_regular(check_inside(run_dir, grids[-1], "a sample grid"), "the sample grid", MAX_GRID_BYTES)
    except OSError as exc:
        raise DataError(f"{grids[-1]} cannot be read ({exc.strerror or exc})") from None
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{grids[-1]} is not a PNG picture; TrainSegmentNet.py writes its sample grids as PNG. Delete "
                        f"it, or give the run folder as training left it")
    return grids[-1].name, data


def training_seconds(records: list[dict]) -> float:
    """The wall-clock of a run up to its last record, validation and saving included. Records hold
    only the validated epochs (val_every), so their epoch_seconds do not add up to it; each holds
    elapsed_seconds, the clock since the run began. A clock that starts again (a resume without a time
    budget, before this release kept the clock then) adds the time up to the stop. Records from before
    elapsed_seconds (every epoch validated then) add their epochs' training time."""
    if not all(isinstance(r.get("elapsed_seconds"), (int, float)) for r in records):
        return sum(r.get("epoch_seconds", 0.0) for r in records)
    total, previous = 0.0, 0.0
    for r in records:
        if r["elapsed_seconds"] < previous:  # the clock started again: keep what it had counted
            total += previous
        previous = r["elapsed_seconds"]
    return total + previous


def is_number_or_nan(value) -> bool:
    """A number, NaN and Infinity included (a record's train loss is NaN when every step was skipped)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_records(records: list[dict], path) -> None:
    """DataError naming the file and epoch when a record lacks what the report draws, or holds another kind."""
    for number, r in enumerate(records, 1):
        problems = [k for k in ("epoch", "val_miou", "val_loss", "train_loss") if not is_number_or_nan(r.get(k))]
        problems += [k for k in ("epoch_seconds", "images_per_second") if k in r and not is_number_or_nan(r[k])]
        iou = r.get("val_per_class_iou")
        if not (isinstance(iou, list) and all(v is None or is_number_or_nan(v) for v in iou)):
            problems.append("val_per_class_iou")
        if problems:
            raise DataError(f"{path}, record {number}: {', '.join(problems)} missing or not numbers; the file was "
                            f"not written by TrainSegmentNet.py or was edited. Give the run folders that "
                            f"TrainSegmentNet.py wrote")


def read_run_config(path: Path) -> dict:
    """A run's config.json ({} when there is none); DataError naming it when it is not a JSON object."""
    if not path.exists():
        return {}
    try:
        config = read_json(path, "the run's configuration")
    except (OSError, ValueError, DataError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc}); the file is corrupt. Restore it from a copy of "
                        f"the run, or delete it (the report then shows '?' for the model and dataset)") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_options", {}), dict):
        raise DataError(f"{path} is not a training configuration (a JSON object whose model_options is an object); "
                        f"restore it from a copy of the run, or delete it")
    return config


def run_labels(runs: list[dict]) -> list[str]:
    """Folder names, or the whole paths when two folders share a name."""
    names = [r["dir"].name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r["dir"]) for r in runs]
    if len(set(names)) < len(names):  # the same folder twice
        names = [f"{name} ({k})" for k, name in enumerate(names, 1)]
    return names


def figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def comparison_curves(runs, labels) -> bytes:
    plt = pyplot()
    fig, (ax_miou, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=80)
    for run, label in zip(runs, labels):
        epochs = [r["epoch"] for r in run["records"]]
        line, = ax_miou.plot(epochs, [r["val_miou"] for r in run["records"]], marker=".", label=label)
        ax_loss.plot(epochs, [r["val_loss"] for r in run["records"]], marker=".", color=line.get_color(),
                     label=f"{label} val")
        ax_loss.plot(epochs, [r["train_loss"] for r in run["records"]], linestyle="--", color=line.get_color(),
                     label=f"{label} train")
    ax_miou.set_title("val mIoU")
    ax_loss.set_title("loss (solid: val, dashed: train)")
    for ax in (ax_miou, ax_loss):
        epoch_axis(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_bytes(fig)


def per_class_table(runs) -> tuple[list[str], list[list], list[str]]:
    """(class names shown, rows of best-epoch IoU per run, classes absent in every run)."""
    classes = runs[0]["classes"]
    shown, rows, absent = [], [], []
    for index, name in enumerate(classes):
        values = [r["best"]["val_per_class_iou"][index] if index < len(r["best"]["val_per_class_iou"]) else None
                  for r in runs]
        if all(v is None for v in values):
            absent.append(name)
            continue
        shown.append(name)
        rows.append(values)
    return shown, rows, absent


def per_class_chart(runs, labels) -> bytes:
    shown, rows, _ = per_class_table(runs)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(11, 2 + 0.5 * len(shown) * len(runs) ** 0.5), 3.4), dpi=80)
    width = 0.8 / len(runs)
    for k, label in enumerate(labels):
        values = [row[k] if row[k] is not None else 0.0 for row in rows]
        ax.bar(np.arange(len(shown)) + k * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(np.arange(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("per-class IoU at each run's best epoch")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_bytes(fig)


def runs_table(runs, labels) -> tuple[list[str], list[list[str]]]:
    header = ["run", "model", "options", "parameters", "best val mIoU", "best epoch", "epochs",
              "training time", "images/s"]
    rows = []
    for run, label in zip(runs, labels):
        params = "?" if run["parameters"] is None else f"{run['parameters'] / 1e6:.3f} M"
        options = ", ".join(f"{k}={v}" for k, v in run["model_options"].items()) or "defaults"
        rows.append([label, run["model"], options, params, f"{run['best']['val_miou']:.4f}", str(run["best"]["epoch"]),
                     str(run["records"][-1]["epoch"]), f"{run['train_seconds'] / 60:.1f} min",
                     f"{run['images_per_second']:.1f}"])
    return header, rows


def report_notes(runs) -> list[str]:
    notes = ["Training time is the wall-clock from the start of a run to its last recorded epoch, validation "
             "and saving included (the time between a stop and its resume is not); images/s is the median over "
             "the recorded epochs' training. Per-class IoU is that of each run's best epoch; '—' marks a class absent "
             "from both truth and prediction (left out of that run's mean)."]
    datasets = {(r["dataset"], str(r["data_dir"])) for r in runs}
    if len(datasets) > 1:
        notes.append("Warning: these runs were not trained on the same data: " +
                     "; ".join(f"{d} in {p}" for d, p in sorted(datasets)) + ".")
    _, _, absent = per_class_table(runs)
    if absent:
        notes.append(f"Classes absent in every run (not shown): {', '.join(absent)}.")
    return notes


def report_paths(out_html) -> tuple[Path, Path, Path]:
    """(page, Markdown twin, pictures folder) for --out: the page must end in .html (so that the twin,
    .md, is another file), and each of them must be new or Report's own; DataError naming any other."""
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out_html} must name the HTML page, ending in .html (the Markdown twin is written "
                         f"next to it with .md); e.g. --out {out_html.with_suffix('.html')}")
    files_dir = refuse_input_data(out_html.with_name(f"{out_html.stem}_files"), "the folder for the Markdown's pictures")
    check_claimable(files_dir, "Report", "the folder for the Markdown's pictures")
    return check_replaceable(out_html, "Report", "--out"), check_replaceable(out_html.with_suffix(".md"), "Report",
                                                                           "the Markdown twin of --out"), files_dir


def build_report(run_dirs, out_html) -> tuple[Path, Path]:
    """Write out_html (self-contained: pictures as base64) and its Markdown twin (pictures in <stem>_files/)."""
    out_html, out_md, files_dir = report_paths(out_html)   # refused before any work
    runs = [load_run(d) for d in run_dirs]
    labels = run_labels(runs)
    pictures = {"curves.png": comparison_curves(runs, labels), "per_class_iou.png": per_class_chart(runs, labels)}
    for label, run in zip(labels, runs):
        if run["grid"] is not None:
            pictures[f"samples_{safe_name(label)}.png"] = run["grid"][1]
    claim_folder(files_dir, "Report", "the folder for the Markdown's pictures")
    for name, data in pictures.items():
        with writing_into(files_dir, name, "the Markdown's picture") as target, atomic_path(target) as tmp:
            tmp.write_bytes(data)
    write_text(report_html(runs, labels, pictures), out_html)
    write_text(report_markdown(runs, labels, pictures, files_dir.name), out_md)
    return out_html, out_md


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def report_markdown(runs, labels, pictures, files_dir: str) -> str:
    header, rows = runs_table(runs, labels)
    shown, iou_rows, _ = per_class_table(runs)
    lines = [f"<!-- {signature('Report')} -->", "", "# Training runs compared", ""]
    lines += [f"- {n}" for n in report_notes(runs)] + [""]
    lines += markdown_table(header, rows) + ["", "## Curves", "", f"![curves]({files_dir}/curves.png)", "",
                                            "## Per-class IoU (best epoch)", ""]
    lines += markdown_table(["class"] + labels, [[n] + [fmt(v) for v in vals] for n, vals in zip(shown, iou_rows)])
    lines += ["", f"![per-class IoU]({files_dir}/per_class_iou.png)", ""]
    for label, run in zip(labels, runs):
        if run["plan"]:
            lines += [f"## The plan of {label} (--auto)", ""]
            lines += markdown_table(["settings", "why"], [[cell.replace("|", "\\|") for cell in row]
                                                          for row in run["plan"]]) + [""]
    lines += ["## Latest sample grids", ""]
    for label, run in zip(labels, runs):
        name = f"samples_{safe_name(label)}.png"
        grid = f"![{label}]({files_dir}/{name})" if name in pictures else "(no sample grid in this run)"
        lines += [f"### {label}", "", f"{run['grid'][0] if run['grid'] else ''}", "", grid, ""]
    return "\n".join(lines)


def markdown_table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
            ["| " + " | ".join(row) + " |" for row in rows])


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; }
.grids { display: flex; flex-wrap: wrap; gap: 16px; }
.grids figure { margin: 0; }
.note { color: #555; font-size: 13px; }
"""


def report_html(runs, labels, pictures) -> str:
    header, rows = runs_table(runs, labels)
    shown, iou_rows, _ = per_class_table(runs)
    parts = [f"<!DOCTYPE html>\n<!-- {signature('Report')} -->",
             "<html><head><meta charset='utf-8'><title>Training runs compared</title>",
             f"<style>{HTML_STYLE}</style></head><body><h1>Training runs compared</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in report_notes(runs)]
    parts += [html_table(header, rows), "<h2>Curves</h2>", embedded(pictures["curves.png"], "curves"),
              "<h2>Per-class IoU (best epoch)</h2>",
              html_table(["class"] + labels, [[n] + [fmt(v) for v in vals] for n, vals in zip(shown, iou_rows)]),
              embedded(pictures["per_class_iou.png"], "per-class IoU")]
    for label, run in zip(labels, runs):
        if run["plan"]:
            parts += [f"<h2>The plan of {html.escape(label)} (--auto)</h2>", html_table(["settings", "why"], run["plan"])]
    parts.append("<h2>Latest sample grids</h2><div class='grids'>")
    for label, run in zip(labels, runs):
        name = f"samples_{safe_name(label)}.png"
        picture = embedded(pictures[name], label) if name in pictures else "<p>(no sample grid in this run)</p>"
        caption = f"{label}: {run['grid'][0]}" if run["grid"] else label
        parts.append(f"<figure><figcaption>{html.escape(caption)}</figcaption>{picture}</figure>")
    parts.append("</div></body></html>")
    return "\n".join(parts)
