"""DataSeparate: the common layout, masks read as indices (real VOC sample too), bad pairs named, ids
listed twice refused, only its own output replaced, and nothing left behind by an interrupted run."""
from __future__ import annotations

import io
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
from conftest import (ROOT, SETS, TINY_COUNTS, VOC, make_small_voc, png_declaring, realdata, run_script, script_process,
                      write_tar_members)
from PIL import Image

import DataExtract
import DataSeparate
from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.core.files import mark_owned, owner_of
from segmentnet.datasets import voc2012
from segmentnet.datasets.separate import separate
from segmentnet.preparation import synthetic

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

FAULT_CHILD = Path(__file__).resolve().parent / "fault_child.py"  # --slow-separate: pairs that take a while


def start_slow_separation(data_dir: Path) -> tuple[subprocess.Popen, Path]:
    """DataSeparate in a subprocess (a session of its own), slowed down; returns once it is converting."""
    started = data_dir / "started"
    process = subprocess.Popen([sys.executable, str(FAULT_CHILD), "--slow-separate", str(started), str(data_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
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


# ----------------------------------------------------------------------------- images and masks


def broken(kind: str, files: dict[str, bytes], stem: str) -> dict[str, bytes]:
    """A copy of the synthetic VOC files with one pair spoiled in the given way."""
    jpg, png = f"{voc2012.ROOT}/JPEGImages/{stem}.jpg", f"{voc2012.ROOT}/SegmentationClass/{stem}.png"
    files = dict(files)
    label = np.array(Image.open(io.BytesIO(files[png])))
    if kind == "corrupt JPEG":
        files[jpg] = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    elif kind == "truncated JPEG":
        files[jpg] = files[jpg][: len(files[jpg]) // 2]
    elif kind == "truncated PNG":
        files[png] = files[png][: len(files[png]) // 2]
    elif kind == "corrupt PNG":
        spoiled = bytearray(files[png])
        spoiled[spoiled.index(b"IDAT") + 10] ^= 0xFF  # the chunk's checksum no longer matches
        files[png] = bytes(spoiled)
    elif kind == "sizes differ":
        files[png] = synthetic.palette_png(label[:-7, :-5].copy(), list(voc2012.PALETTE))
    elif kind == "colour mask":
        rgb = np.array(voc2012.PALETTE + ((224, 224, 192),) * 235, dtype=np.uint8)[label]
        files[png] = synthetic.encode(Image.fromarray(rgb, "RGB"), "PNG")
    elif kind == "label out of range":
        label[:4, :4] = 30
        files[png] = synthetic.palette_png(label, list(voc2012.PALETTE))
    elif kind == "empty split":
        files[f"{SETS}/train.txt"] = b""
    return files


def first_stem(files: dict[str, bytes]) -> str:
    return sorted(f for f in files if f.startswith(f"{voc2012.ROOT}/JPEGImages/"))[0].rsplit("/", 1)[1][:-4]


def write_raw(data: Path, files: dict[str, bytes]) -> Path:
    """The VOC files written under data/raw/ as DataExtract leaves them; returns that raw folder."""
    raw = data / "raw" / VOC.stem
    for name, payload in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(payload)
    return raw


PAIR_PROBLEMS = {
    "corrupt JPEG": ("{jpg}", "the image cannot be decoded"),
    "truncated JPEG": ("{jpg}", "truncated"),
    "truncated PNG": ("{png}", "the mask cannot be decoded"),
    "corrupt PNG": ("{png}", "the mask cannot be decoded"),
    "sizes differ": ("{png}", "they must be the same size"),
    "colour mask": ("{png}", "colour (RGB) mask, but class indices are expected"),
    "label out of range": ("{png}", "label values [30] are outside the 21 classes"),
    "empty split": ("", "split(s) train have no images"),
}


@pytest.mark.parametrize("kind", sorted(PAIR_PROBLEMS))
def test_bad_pairs_stop_separation(tmp_path, kind):
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    raw = write_raw(tmp_path / "data", broken(kind, files, stem))
    where, message = PAIR_PROBLEMS[kind]
    where = where.format(jpg=raw / voc2012.ROOT / "JPEGImages" / f"{stem}.jpg",
                         png=raw / voc2012.ROOT / "SegmentationClass" / f"{stem}.png")
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1])
    assert status == 2, err
    assert f"error: {where}" in err and message in err, err
    # Nothing but the raw files: no data/voc2012, no half-written temporary folder.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_skip_bad_skips_and_lists_the_pair(tmp_path):
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    write_raw(tmp_path / "data", broken("colour mask", files, stem))
    status, _ = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad"])
    assert status == 0
    info = json.loads((tmp_path / "data" / "voc2012" / "dataset.json").read_text())
    assert [s["stem"] for s in info["skipped"]] == [stem]
    assert sum(info["counts"].values()) == TINY_COUNTS["train"] + TINY_COUNTS["val"] - 1


def test_corrupt_image_through_the_script(tmp_path):
    files = broken("truncated JPEG", voc2012.synthetic_files(0, TINY_COUNTS), "2008_000001")
    synthetic.write_tar(tmp_path / "downloads" / VOC.filename, files)
    extracted = script_process("DataExtract.py", "--no-verify", cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    result = script_process("DataSeparate.py", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "\nerror: " in result.stderr and "2008_000001.jpg: the image cannot be decoded" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- names and lists from the data


def victims(folder: Path, size: tuple[int, int] = (20, 16)) -> dict[Path, tuple[bytes, int]]:
    """Decoy files outside the data folder, a valid image and mask (so that a tool that reached
    them would use them); their bytes and times, to compare after."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "victim.jpg").write_bytes(synthetic.encode(Image.new("RGB", size, (200, 10, 10)), "JPEG"))
    (folder / "victim.png").write_bytes(synthetic.palette_png(np.ones(size[::-1], np.uint8), list(voc2012.PALETTE)))
    return file_states(folder)


def file_states(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def escaping_ids(victim: Path) -> dict[str, str]:
    """Split-list ids that name `victim` (no suffix), each in its own way."""
    climb = "../" * 40 + str(victim).lstrip("/")  # '..' past the root stays at the root
    return {"dot-dot": climb, "through a link": "../up/" + climb, "absolute": str(victim)}


@pytest.mark.parametrize("case", ["dot-dot", "through a link", "absolute"])
def test_split_list_ids_that_lead_out_are_refused(tmp_path, case):
    """A link that stays inside the archive is extracted; an id that leads out through it (or
    with '..', or an absolute one) is refused, naming the list, the line and the id; nothing
    outside data/ is read or written."""
    before = victims(tmp_path)
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    bad_id = escaping_ids(tmp_path / "victim")[case]
    genuine = files[f"{SETS}/train.txt"].decode().split()
    files[f"{SETS}/train.txt"] = ("\n".join([genuine[0], bad_id] + genuine[1:]) + "\n").encode()
    members = [(name, "file", payload) for name, payload in files.items()]
    members.append((f"{voc2012.ROOT}/up", "symlink", "JPEGImages"))
    archive = write_tar_members(tmp_path / VOC.filename, members)
    data = tmp_path / "data"
    status, err = run_script(DataExtract.main, ["--archive", archive, "--data-dir", data, "--no-verify"])
    assert status == 0, err
    status, err = run_script(DataSeparate.main, ["--data-dir", data, "--workers", 1])
    assert status == 2, err
    listed = data / "raw" / VOC.stem / SETS / "train.txt"
    assert err.startswith(f"error: {listed} line 2: the name {bad_id!r} ") and "Traceback" not in err, err
    assert file_states(tmp_path) == before | {archive: file_states(tmp_path)[archive]}
    assert sorted(p.name for p in data.iterdir()) == ["raw"]


def test_raw_files_that_link_out_are_refused(tmp_path):
    """A raw folder made by hand (or a link added after extraction): a listed image that is a link
    to a file outside data/raw/<archive> is never read."""
    before = victims(tmp_path)
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    raw = write_raw(tmp_path / "data", files)
    image = raw / voc2012.ROOT / "JPEGImages" / f"{stem}.jpg"
    image.unlink()
    image.symlink_to(tmp_path / "victim.jpg")
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad"])
    assert status == 2, err
    line = files[f"{SETS}/train.txt"].decode().split().index(stem) + 1
    assert err.startswith(f"error: {raw / SETS / 'train.txt'} line {line}: {image} leads to {tmp_path / 'victim.jpg'}, "
                          f"outside {raw.resolve()}"), err
    assert file_states(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
    # the split list itself, a link to a list outside
    image.unlink()
    image.write_bytes(files[f"{voc2012.ROOT}/JPEGImages/{stem}.jpg"])
    listed = raw / SETS / "train.txt"
    listed.unlink()
    listed.symlink_to(tmp_path / "victim.txt")
    (tmp_path / "victim.txt").write_text(f"{stem}\n")
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1])
    assert status == 2 and err.startswith(f"error: split list {listed}: {listed} leads to {tmp_path / 'victim.txt'}, "
                                          f"outside {raw.resolve()}"), err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


SPLIT_LIST_PROBLEMS = {
    "a folder": (lambda path: path.mkdir(), "is not a file (a folder, or a special file)"),
    "not text": (lambda path: path.write_bytes(b"2008_000001\n\xff\xfe\x00\x81\n"), "line 2: b'\\xff\\xfe"),
    "a NUL byte": (lambda path: path.write_bytes(b"2008\x00_000001\n"), "line 1: the name '2008\\x00_000001' contains a NUL"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_LIST_PROBLEMS))
def test_bad_split_lists_are_named(tmp_path, case):
    raw = write_raw(tmp_path / "data", voc2012.synthetic_files(0, TINY_COUNTS))
    listed = raw / SETS / "train.txt"
    listed.unlink()
    spoil, message = SPLIT_LIST_PROBLEMS[case]
    spoil(listed)
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1])
    assert status == 2 and err.startswith(f"error: {listed}") and message in err, err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


@pytest.mark.parametrize("slot,size", [("image", (30000, 30000)), ("mask", (10000, 10000))])
def test_decompression_bomb_is_named_and_skippable(tmp_path, slot, size):
    """30000x30000 is past Pillow's error limit, 10000x10000 past its warning limit: both refused
    from the header, before any pixel is allocated."""
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    bomb = f"{voc2012.ROOT}/JPEGImages/{stem}.jpg" if slot == "image" else f"{voc2012.ROOT}/SegmentationClass/{stem}.png"
    files[bomb] = png_declaring(*size)
    raw = write_raw(tmp_path / "data", files)
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1])
    assert status == 2, err
    assert f"\nerror: {raw / bomb}: the {slot} declares more pixels than any image of a dataset" in err, err
    assert "decompression bomb" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad"])
    assert status == 0, err
    info = json.loads((tmp_path / "data" / "voc2012" / "dataset.json").read_text())
    assert [s["stem"] for s in info["skipped"]] == [stem] and "decompression bomb" in info["skipped"][0]["error"]


@pytest.mark.parametrize("content", [b"{\"counts\": {\"train\"", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_dataset_json_of_a_finished_separation(tmp_path, content):
    make_small_voc(tmp_path, counts=TINY_COUNTS)
    summary = tmp_path / "voc2012" / "dataset.json"
    summary.write_bytes(content)
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path, "--workers", 1])
    assert status == 2 and err.startswith(f"error: {summary} ") and "pass --force to separate again" in err, err
    status, err = run_script(DataSeparate.main, ["--data-dir", tmp_path, "--workers", 1, "--force"])
    assert status == 0, err
    assert json.loads(summary.read_text())["counts"] == {"train": 3, "val": 1}
