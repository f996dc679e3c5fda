"""Pictures written during training (curves, sample grids, TensorBoard option) and Report.py's page."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil

import pytest
from conftest import run_script, tiny_train_config
from PIL import Image
from results_helpers import read_png

import Report
from segmentnet.results.visualize import GAP, LABEL_HEIGHT
from segmentnet.training.engine import train


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
    from segmentnet.results.inference import count_parameters, load_model

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
    from segmentnet.core.cli import call_main

    assert call_main(Report.main, [str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def run_report(*argv):
    return run_script(Report.main, argv)


def test_report_out_md_cannot_overwrite_its_html_twin(trained_run, tmp_path):
    # The issue: --out x.md wrote the page to x.md, then its Markdown twin (x.md again) over it.
    status, err = run_report(trained_run, "--out", tmp_path / "x.md")
    assert status == 2 and err.startswith(f"error: --out {tmp_path / 'x.md'} must name the HTML page, ending in .html")
    assert list(tmp_path.iterdir()) == []


def test_report_replaces_only_its_own_files(trained_run, tmp_path):
    out = tmp_path / "report.html"
    for users in (out, out.with_suffix(".md")):
        users.write_text("mine")
        status, err = run_report(trained_run, "--out", out)
        assert status == 2 and "Traceback" not in err
        assert f"{users} already exists and was not written by Report.py" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == [users.name] and users.read_text() == "mine"
        users.unlink()
    (tmp_path / "report_files").mkdir()
    (tmp_path / "report_files" / "curves.png").write_text("mine")
    status, err = run_report(trained_run, "--out", out)
    assert status == 2 and f"{tmp_path / 'report_files'} already holds files that Report did not write" in err
    assert not out.exists() and (tmp_path / "report_files" / "curves.png").read_text() == "mine"
    shutil.rmtree(tmp_path / "report_files")
    assert run_report(trained_run, "--out", out)[0] == 0
    assert run_report(trained_run, "--out", out)[0] == 0       # its own page, twin and pictures: replaced
    assert "written by SegmentNet's Report.py" in out.read_text()


def test_report_refuses_an_out_that_is_a_folder_or_inside_a_dataset(trained_run, tmp_path):
    (tmp_path / "page.html").mkdir()
    status, err = run_report(trained_run, "--out", tmp_path / "page.html")
    assert status == 2 and f"--out {tmp_path / 'page.html'} is an existing folder, not a file" in err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    status, err = run_report(trained_run, "--out", tmp_path / "data" / "val" / "r.html")
    assert status == 2 and "is inside the prepared dataset" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "dataset.json", "page.html"]


def test_report_leaves_out_a_half_written_last_metrics_line(trained_run, tmp_path):
    run = tmp_path / "run_a"
    shutil.copytree(trained_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 0.5, "val_mi')          # killed while writing epoch 3
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 0 and f"note: the last line of {run / 'metrics.jsonl'} is incomplete" in err
    assert "| run_a | segmentnet |" in (tmp_path / "r.md").read_text()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{garbage", lines[1]]) + "\n")
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 2 and err.startswith(f"error: {run / 'metrics.jsonl'}, line 2: not a JSON record")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_miou": "high"}) + "\n")
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 2 and "record 1: val_miou, val_loss, train_loss, val_per_class_iou missing or not" in err


def test_report_names_a_corrupt_config_json(trained_run, tmp_path):
    run = tmp_path / "run_a"
    shutil.copytree(trained_run, run)
    for text in ('{"model": "segmentnet", "epo', "[1, 2]"):
        (run / "config.json").write_text(text)
        status, err = run_report(run, "--out", tmp_path / "r.html")
        assert status == 2 and err.startswith(f"error: {run / 'config.json'}") and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_report_names_config_and_metrics_nested_too_deeply(trained_run, tmp_path):
    run = tmp_path / "run_a"
    shutil.copytree(trained_run, run)
    good_config = (run / "config.json").read_text()
    (run / "config.json").write_text('{"model_options": ' + "[" * 200_000 + "]" * 200_000 + "}")
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 2 and err.startswith(f"error: {run / 'config.json'} cannot be read as JSON (arrays or objects "
                                          f"nested deeper than 64 levels)") and "Traceback" not in err, err
    (run / "config.json").write_text(good_config)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "[" * 200_000 + "]" * 200_000, lines[1]]) + "\n")
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 2 and err.startswith(f"error: {run / 'metrics.jsonl'}, line 2: not a JSON record"), err
    assert not (tmp_path / "r.html").exists()


def test_training_time_counts_the_epochs_between_validations_and_the_validation():
    from segmentnet.results.report import training_seconds

    # val_every 4: records of epochs 4 and 8 only; 12 s of training each epoch, 9 s each validation
    every_fourth = [{"epoch": 4, "epoch_seconds": 12.0, "elapsed_seconds": 57.0},
                    {"epoch": 8, "epoch_seconds": 12.0, "elapsed_seconds": 114.0}]
    assert training_seconds(every_fourth) == 114.0                  # (the sum of epoch_seconds was 24)
    # a resume without a time budget restarted the clock before this release: the time up to the stop counts
    restarted = every_fourth + [{"epoch": 12, "epoch_seconds": 12.0, "elapsed_seconds": 60.0}]
    assert training_seconds(restarted) == 174.0
    # a run folder from before elapsed_seconds (every epoch validated): its epochs' training time
    assert training_seconds([{"epoch": 1, "epoch_seconds": 3.0}, {"epoch": 2, "epoch_seconds": 4.0}]) == 7.0


@pytest.mark.slow
def test_report_shows_the_training_time_of_a_run_validated_every_other_epoch(small_voc, tmp_path):
    run = tmp_path / "sparse"
    train(tiny_train_config(small_voc, run, epochs=4, val_every=2))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 4]
    assert records[-1]["elapsed_seconds"] > sum(r["epoch_seconds"] for r in records)
    # the run took seconds, too little to tell minutes apart: as if it had taken 10 and 20 minutes
    for record, elapsed in zip(records, (600.0, 1200.0)):
        record["elapsed_seconds"] = elapsed
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    status, _ = run_report(run, "--out", tmp_path / "r.html")
    assert status == 0
    assert re.search(r"\| sparse \|.*?\| 20.0 min \|", (tmp_path / "r.md").read_text())


def test_report_never_writes_through_a_planted_pictures_link(trained_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    out = tmp_path / "rp"
    out.mkdir()
    for target, message in ((elsewhere, "is a link (to "), (data / "val", "is inside the prepared dataset")):
        (out / "k_files").symlink_to(target)
        status, err = run_report(trained_run, "--out", out / "k.html")
        assert status == 2 and f"{out / 'k_files'} {message}" in err and "Traceback" not in err, err
        assert os.listdir(target) == [] and sorted(os.listdir(out)) == ["k_files"]
        (out / "k_files").unlink()


def test_report_out_that_is_a_fifo_is_refused_without_blocking(trained_run, tmp_path, no_hang):
    os.mkfifo(tmp_path / "ff.html")
    with no_hang(20):
        status, err = run_report(trained_run, "--out", tmp_path / "ff.html")
    assert status == 2 and f"--out {tmp_path / 'ff.html'} is a special file" in err, err


def test_report_never_embeds_what_a_planted_sample_grid_leads_to(trained_run, tmp_path):
    run = tmp_path / "run_a"
    shutil.copytree(trained_run, run)
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- secret")
    (run / "samples" / "epoch_999.png").symlink_to(secret)   # the latest grid by name
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 0, err
    page = (tmp_path / "r.html").read_bytes()
    assert base64.b64encode(secret.read_bytes()[:30]) not in page and b"secret" not in page
    assert b"epoch_002.png" in page                           # the run's own latest grid instead
    assert all(p.read_bytes() != secret.read_bytes() for p in (tmp_path / "r_files").iterdir())
    (run / "samples" / "epoch_999.png").unlink()
    (run / "samples" / "epoch_999.png").write_bytes(b"not a picture")
    status, err = run_report(run, "--out", tmp_path / "r.html")
    assert status == 2 and "epoch_999.png is not a PNG picture" in err, err
