"""DataSeparate: the common layout, masks read as indices (real VOC sample too), bad pairs named, ids
listed twice refused, only its own output replaced, and nothing left behind by an interrupted run."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import DataSeparate
from conftest import ROOT, make_small_voc, realdata
from segmentnet.cli import call_main
from segmentnet.errors import DataError
from segmentnet.files import mark_owned, owner_of
from segmentnet.datasets import voc2012
from segmentnet.datasets.common import separate

VOC_ROOT = "raw/VOCtrainval_11-May-2012/VOCdevkit/VOC2012"


def fake_raw_voc(data_dir: Path, train: list[tuple[Path, Path]], val: list[tuple[Path, Path]],
                 val_prefix: str = "") -> Path:
    """A raw VOC folder as DataExtract leaves it, holding the given (image, mask) files; the ids of
    val get `val_prefix` (one file may then serve both splits: an id in both is refused)."""
    root = data_dir / VOC_ROOT
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, pairs, prefix in (("train", train, ""), ("val", val, val_prefix)):
        ids = []
        for image, mask in pairs:
            shutil.copy(image, root / "JPEGImages" / f"{prefix}{image.stem}.jpg")
            shutil.copy(mask, root / "SegmentationClass" / f"{prefix}{image.stem}.png")
            ids.append(prefix + image.stem)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return data_dir


def test_real_voc_sample_keeps_its_mask_indices(tmp_path):
    sample = realdata("voc2012")
    image = sample / "JPEGImages" / "2007_000032.jpg"
    mask = sample / "SegmentationClass" / "2007_000032.png"
    data_dir = fake_raw_voc(tmp_path, [(image, mask)], [(image, mask)], val_prefix="v")
    summary = separate(voc2012.DATASET, data_dir, workers=1, progress=False)

    original = np.array(Image.open(mask))
    assert Image.open(mask).mode == "P" and set(np.unique(original)) == {0, 1, 15, 255}
    for split, stem in (("train", "2007_000032"), ("val", "v2007_000032")):
        written = Image.open(tmp_path / "voc2012" / split / "masks" / f"{stem}.png")
        assert written.mode == "P"
        assert np.array_equal(np.array(written), original)
        assert (tmp_path / "voc2012" / split / "images" / f"{stem}.jpg").read_bytes() == image.read_bytes()
    expected = np.bincount(original[original != 255], minlength=21).tolist()
    assert summary["pixel_counts"]["train"] == expected


def test_layout_and_dataset_json(tmp_path):
    make_small_voc(tmp_path, counts={"train": 6, "val": 3, "unlabelled": 2})
    info = json.loads((tmp_path / "voc2012" / "dataset.json").read_text())
    assert info["counts"] == {"train": 6, "val": 3}
    assert info["classes"][15] == "person" and info["ignore_index"] == 255 and len(info["palette"]) == 21
    ids = (tmp_path / VOC_ROOT / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in (tmp_path / "voc2012/train/images").iterdir()) == sorted(ids)
    assert sorted(p.stem for p in (tmp_path / "voc2012/train/masks").iterdir()) == sorted(ids)
    total = np.zeros(21, dtype=np.int64)
    for mask in (tmp_path / "voc2012/train/masks").iterdir():
        values = np.array(Image.open(mask))
        total += np.bincount(values[values != 255], minlength=21)
    assert info["pixel_counts"]["train"] == total.tolist()


def test_bad_pair_is_named_and_skip_bad_lists_it(tmp_path, capsys):
    make_small_voc(tmp_path, counts={"train": 5, "val": 2, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    ids = (tmp_path / VOC_ROOT / "ImageSets/Segmentation/train.txt").read_text().split()
    bad = tmp_path / VOC_ROOT / "SegmentationClass" / f"{ids[1]}.png"
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(bad)  # wrong size
    with pytest.raises(DataError, match=f"{ids[1]}.png: mask is 12x10 but its image .* same size"):
        DataSeparate.main(["--data-dir", str(tmp_path), "--workers", "1"])
    assert not (tmp_path / "voc2012").exists() and not list(tmp_path.glob(".voc2012*"))

    assert DataSeparate.main(["--data-dir", str(tmp_path), "--workers", "1", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"skipped train/{ids[1]}" in out and "1 bad pair(s) skipped" in out
    info = json.loads((tmp_path / "voc2012" / "dataset.json").read_text())
    assert info["counts"]["train"] == 4 and info["skipped"][0]["stem"] == ids[1]
    assert not (tmp_path / "voc2012/train/images" / f"{ids[1]}.jpg").exists()


def test_label_out_of_range_is_named(tmp_path):
    make_small_voc(tmp_path, counts={"train": 3, "val": 2, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    ids = (tmp_path / VOC_ROOT / "ImageSets/Segmentation/val.txt").read_text().split()
    path = tmp_path / VOC_ROOT / "SegmentationClass" / f"{ids[0]}.png"
    values = np.array(Image.open(path))
    values[0, 0] = 42
    Image.fromarray(values, mode="L").save(path)
    with pytest.raises(DataError, match=r"label values \[42\] are outside the 21 classes"):
        separate(voc2012.DATASET, tmp_path, workers=1, progress=False)


# ----------------------------------------------------------------------------- the output folder


def test_a_folder_it_did_not_write_is_never_replaced(tmp_path, capsys):
    """data/voc2012 holding a user's files (no dataset.json, no owner mark) is left as it is, with
    --force too; a folder of another tool likewise; its own output is redone with --force."""
    make_small_voc(tmp_path, counts={"train": 3, "val": 1, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    users = tmp_path / "voc2012"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    argv = ["--data-dir", str(tmp_path), "--workers", "1"]
    for extra in ([], ["--force"]):
        assert call_main(DataSeparate.main, argv + extra) == 2
        err = capsys.readouterr().err
        assert f"error: {users} holds files DataSeparate did not write" in err, err
        assert sorted(os.listdir(users)) == ["notes.txt"] and not list(tmp_path.glob(".voc2012*"))
    mark_owned(users, "Predict")
    assert call_main(DataSeparate.main, argv + ["--force"]) == 2
    assert f"error: {users} was written by Predict" in capsys.readouterr().err
    assert (users / "notes.txt").read_text() == "mine"

    shutil.rmtree(users)
    users.mkdir()  # an empty folder is taken
    assert call_main(DataSeparate.main, argv) == 0
    assert owner_of(users)["tool"] == "DataSeparate"
    (users / "train" / "images" / "stale.jpg").write_bytes(b"x")
    assert call_main(DataSeparate.main, argv + ["--force"]) == 0  # its own output: redone
    assert not (users / "train" / "images" / "stale.jpg").exists()
    assert json.loads((users / "dataset.json").read_text())["counts"] == {"train": 3, "val": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "raw", "voc2012"]


# ----------------------------------------------------------------------------- ids listed twice


def set_list(data_dir: Path, split: str, ids: list[str]) -> Path:
    path = data_dir / VOC_ROOT / "ImageSets/Segmentation" / f"{split}.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def test_an_id_listed_twice_is_refused_naming_the_line(tmp_path):
    make_small_voc(tmp_path, counts={"train": 4, "val": 2, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    ids = (tmp_path / VOC_ROOT / "ImageSets/Segmentation/train.txt").read_text().split()
    listed = set_list(tmp_path, "train", ids + ["", ids[1]])
    with pytest.raises(DataError, match=rf"^{re.escape(str(listed))} line 6: the id '{ids[1]}' is listed again "
                                        rf"\(first on line 2\)"):
        separate(voc2012.DATASET, tmp_path, workers=1, progress=False)
    assert not (tmp_path / "voc2012").exists()


def test_an_id_in_train_and_val_is_refused_naming_both_lists(tmp_path):
    make_small_voc(tmp_path, counts={"train": 4, "val": 2, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    sets = tmp_path / VOC_ROOT / "ImageSets/Segmentation"
    train, val = (sets / "train.txt").read_text().split(), (sets / "val.txt").read_text().split()
    set_list(tmp_path, "val", val + [train[2]])
    with pytest.raises(DataError, match=rf"^'{train[2]}' is in split 'train' \({re.escape(str(sets / 'train.txt'))} "
                                        rf"line 3\) and in split 'val' \({re.escape(str(sets / 'val.txt'))} line 3\): "
                                        rf"an image in two splits leaks"):
        separate(voc2012.DATASET, tmp_path, workers=1, progress=False)
    assert not (tmp_path / "voc2012").exists()


# ----------------------------------------------------------------------------- interrupted runs

SLOW_SEPARATE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from segmentnet.datasets import common
import DataSeparate
from segmentnet.cli import call_main

convert = common._convert_pair
def slow(*args):  # each pair takes a while, and says when the first has begun
    Path({started!r}).touch()
    time.sleep(0.3)
    return convert(*args)
common._convert_pair = slow
sys.exit(call_main(DataSeparate.main, ["--data-dir", {data!r}, "--workers", "1"]))
"""


def start_slow_separation(data_dir: Path) -> tuple[subprocess.Popen, Path]:
    """DataSeparate in a subprocess (a session of its own), slowed down; returns once it is converting."""
    started = data_dir / "started"
    script = SLOW_SEPARATE.format(root=str(ROOT), started=str(started), data=str(data_dir))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the separation never started"
        time.sleep(0.05)
    started.unlink()
    assert list(data_dir.glob(".voc2012.partial-*")), "a partial folder while converting"
    return process, started


@pytest.fixture
def raw_voc(tmp_path) -> Path:
    make_small_voc(tmp_path, counts={"train": 12, "val": 4, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")
    return tmp_path


def test_sigterm_mid_separation_leaves_nothing(raw_voc):
    process, _ = start_slow_separation(raw_voc)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal 15: nothing was written" in err and "Traceback" not in err, err
    assert sorted(p.name for p in raw_voc.iterdir()) == ["downloads", "raw"]


def test_the_next_run_removes_what_a_killed_run_left(raw_voc):
    process, _ = start_slow_separation(raw_voc)
    os.killpg(process.pid, signal.SIGKILL)  # no handler runs: the partial folder stays
    process.communicate(timeout=60)
    (left,) = raw_voc.glob(".voc2012.partial-*")
    assert owner_of(left) == {"tool": "DataSeparate", "host": socket.gethostname(), "pid": process.pid}
    # Not removed: a partial folder of a live process (this one), and one without DataSeparate's mark.
    live = raw_voc / ".voc2012.partial-live"
    live.mkdir()
    mark_owned(live, "DataSeparate", host=socket.gethostname(), pid=os.getpid())
    unmarked = raw_voc / ".voc2012.partial-mine"
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("mine")

    summary = separate(voc2012.DATASET, raw_voc, workers=1, progress=False)
    assert summary["counts"] == {"train": 12, "val": 4}
    assert not left.exists() and live.is_dir() and (unmarked / "keep.txt").exists()
    assert sorted(p.name for p in raw_voc.iterdir()) == sorted([".voc2012.partial-live", ".voc2012.partial-mine",
                                                                 "downloads", "raw", "voc2012"])


# ----------------------------------------------------------------------------- what it did not write, write failures


def test_force_never_deletes_what_it_did_not_write_inside_its_folder(tmp_path, capsys):
    make_small_voc(tmp_path, counts={"train": 3, "val": 1, "unlabelled": 0})
    out = tmp_path / "voc2012"
    run = out / "runs" / "a"                                  # e.g. a training's --out of an earlier release
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / "val" / "notes.txt").write_text("mine")
    argv = ["--data-dir", str(tmp_path), "--workers", "1", "--force"]
    assert call_main(DataSeparate.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} was written by DataSeparate, but it also holds what DataSeparate did not "
                          f"write ({run}, {out / 'val' / 'notes.txt'}); replacing the folder would delete "
                          f"them"), err
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n' and (out / "val" / "notes.txt").exists()
    assert not list(tmp_path.glob(".voc2012*"))
    shutil.rmtree(out / "runs")
    (out / "val" / "notes.txt").unlink()
    assert call_main(DataSeparate.main, argv) == 0             # its own layout alone: redone


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_full_disk_is_one_error_naming_the_file(tmp_path, capsys, monkeypatch, skip_bad):
    import errno

    make_small_voc(tmp_path, counts={"train": 3, "val": 1, "unlabelled": 0})
    shutil.rmtree(tmp_path / "voc2012")

    def disk_full(source, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(shutil, "copyfile", disk_full)   # (the pool's workers are forked: they have it too)
    status = call_main(DataSeparate.main, ["--data-dir", str(tmp_path), "--workers", "1"]
                      + (["--skip-bad"] if skip_bad else []))
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert re.search(rf"^error: could not write {re.escape(str(tmp_path))}/\.voc2012\.partial-\w+/\w+/images/"
                    rf"[\w.]+: No space left on device", err, re.MULTILINE), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "raw"]   # nothing half-written


def test_a_data_folder_it_cannot_write_is_one_error(tmp_path):
    from conftest import unprivileged

    prefix = unprivileged()  # root writes anywhere: run without the capability that lets it
    data = tmp_path / "data"
    make_small_voc(data, counts={"train": 3, "val": 1, "unlabelled": 0})
    shutil.rmtree(data / "voc2012")
    data.chmod(0o555)
    try:
        result = subprocess.run([*prefix, sys.executable, str(ROOT / "DataSeparate.py"), "--data-dir", str(data),
                                 "--workers", "1"], capture_output=True, text=True, timeout=300)
    finally:
        data.chmod(0o755)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: could not write {data}: Permission denied"), result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["downloads", "raw"]
