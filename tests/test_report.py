"""Pictures written during training (curves, sample grids, TensorBoard option) and Report.py's page."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil

import pytest
from PIL import Image

import Report
from conftest import tiny_train_config
from results_helpers import read_png
from segmentnet.engine import train
from segmentnet.visualize import GAP, LABEL_HEIGHT


@pytest.fixture(scope="module")
def trained(small_voc, tmp_path_factory):
    """One short training run (2 epochs) with --tensorboard, shared by the tests below: read only.

    Returns the run folder and what the run printed on stderr."""
    run = tmp_path_factory.mktemp("report") / "run_a"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        train(tiny_train_config(small_voc, run, epochs=2, tensorboard=True))
    return run, stderr.getvalue()


@pytest.fixture(scope="module")
def trained_run(trained):
    return trained[0]


def test_training_writes_curves_and_sample_grids_every_epoch(trained_run):
    mode, size, _ = read_png(trained_run / "curves.png")
    assert mode in ("RGB", "RGBA") and size == (960, 272)   # matplotlib's 12 x 3.4 inches at 80 dpi
    grids = sorted(p.name for p in (trained_run / "samples").iterdir())
    assert grids == ["epoch_001.png", "epoch_002.png"]
    # 3 val + 3 train rows of three 128 x 96 tiles, a caption strip per column header and per section.
    mode, size, pixels = read_png(trained_run / "samples" / "epoch_001.png")
    assert mode == "RGB" and size == (3 * 128 + 2 * GAP, 3 * LABEL_HEIGHT + 6 * (96 + GAP))
    _, size2, pixels2 = read_png(trained_run / "samples" / "epoch_002.png")
    assert size2 == size
    truth_column = slice(128 + GAP, 2 * 128 + GAP)
    assert (pixels[:, truth_column] == pixels2[:, truth_column]).all()   # the same fixed images and truths


def test_tensorboard_option_writes_events_or_says_how_to_install(trained):
    run, stderr = trained
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "pip install tensorboard" in stderr
        assert (run / "last.pt").exists() and not (run / "tensorboard").exists()   # the run went on without it
    else:
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_report_is_one_self_contained_page_with_a_markdown_twin(trained_run, tmp_path):
    from segmentnet.inference import count_parameters, load_model

    other = tmp_path / "run_b"
    shutil.copytree(trained_run, other)
    out = tmp_path / "out" / "report.html"
    assert Report.main([str(trained_run), str(other), "--out", str(out)]) == 0
    page = out.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)  # 2 charts, 2 grids
    for source in sources:
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["val_miou"])
    parameters = count_parameters(load_model(trained_run / "best.pt")[0])
    assert f"<td>{best['val_miou']:.4f}</td><td>{best['epoch']}</td>" in page
    assert f"{parameters / 1e6:.3f} M" in page and "run_a" in page and "run_b" in page
    markdown = out.with_suffix(".md").read_text()
    for target in re.findall(r"\]\(([^)]+\.png)\)", markdown):
        read_png(out.parent / target)
    assert "| run_a | segmentnet |" in markdown


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from segmentnet.cli import run_main

    assert run_main(Report.main, [str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
