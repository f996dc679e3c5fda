"""Predict.py: the pictures it writes, and the class-index PNG read back as the same indices."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_script
from PIL import Image
from results_helpers import read_png, tiny_segmentnet_checkpoint

import Predict
from segmentnet.results.inference import run_model
from segmentnet.results.visualize import GAP


@pytest.fixture(scope="module")
def checkpoint(small_voc, tmp_path_factory):
    return tiny_segmentnet_checkpoint(tmp_path_factory.mktemp("predict") / "net.pt", small_voc)


def test_predict_writes_masks_overlays_and_panels(small_voc, checkpoint, tmp_path, capsys):
    val = small_voc / "voc2012" / "val"
    images = sorted((val / "images").iterdir())[:3]
    out = tmp_path / "pred"
    # A folder, a glob and a file naming an image twice: each image is predicted once.
    assert Predict.main([str(checkpoint), str(images[0]), str(val / "images" / f"{images[1].stem}*"),
                         str(images[0]), "--out", str(out), "--masks", str(val / "masks"), "--no-progress",
                         "--device", "cpu"]) == 0
    expected = run_model(checkpoint, images[:2], device="cpu")
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{p.stem}.png" for p in images[:2])
    for path, prediction in zip(images[:2], expected):
        width, height = Image.open(path).size
        mode, size, indices = read_png(out / "masks" / f"{path.stem}.png")
        assert mode == "P" and size == (width, height)
        assert np.array_equal(indices, prediction)            # the PNG holds the class indices themselves
        with Image.open(out / "masks" / f"{path.stem}.png") as mask:
            assert mask.getpalette()[3:6] == [128, 0, 0]      # VOC's colour of class 1 (aeroplane)
        mode, size, _ = read_png(out / "overlays" / f"{path.stem}.png")
        assert mode == "RGB" and size == (width, height)
        mode, size, pixels = read_png(out / "panels" / f"{path.stem}.png")
        assert mode == "RGB" and size == (3 * width + 2 * GAP, height)
        assert np.array_equal(pixels[:, :width], np.asarray(Image.open(path).convert("RGB")))
    assert "2 image|truth|prediction panels" in capsys.readouterr().out


def test_predict_without_masks_writes_no_panels(small_voc, checkpoint, tmp_path):
    folder = small_voc / "voc2012" / "val" / "images"
    assert Predict.main([str(checkpoint), str(folder), "--out", str(tmp_path / "p"), "--limit", "2",
                         "--no-progress", "--flip"]) == 0
    assert len(list((tmp_path / "p" / "masks").iterdir())) == 2
    assert not (tmp_path / "p" / "panels").exists()


def test_predict_names_an_input_that_matches_nothing(checkpoint, tmp_path, capsys):
    from segmentnet.core.cli import call_main

    assert call_main(Predict.main, [str(checkpoint), str(tmp_path / "nope*.jpg"), "--out", str(tmp_path)]) == 2
    assert "nope*.jpg" in capsys.readouterr().err


def run_predict(checkpoint, inputs, out, *extra):
    return run_script(Predict.main, [checkpoint, *inputs, "--out", out, "--no-progress", "--device", "cpu", *extra])


def folder_bytes(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_never_writes_into_a_prepared_dataset(small_voc, checkpoint, tmp_path):
    import shutil

    dataset = tmp_path / "data" / "voc2012"
    shutil.copytree(small_voc / "voc2012", dataset)
    before = folder_bytes(dataset)
    images = dataset / "val" / "images"
    # The issue: --out pointed at the split replaced its ground-truth masks (Evaluate then said mIoU 1.0).
    for out in (dataset / "val", dataset / "val" / "pred", dataset, dataset / "val" / "masks"):
        status, err = run_predict(checkpoint, [images], out)
        assert status == 2 and "Traceback" not in err
        assert err.startswith(f"error: --out {out} is inside the prepared dataset {dataset.resolve()}")
    assert folder_bytes(dataset) == before and not (dataset / "val" / "pred").exists()
    # Through a link, too.
    (tmp_path / "link").symlink_to(dataset / "val")
    assert run_predict(checkpoint, [images], tmp_path / "link")[0] == 2
    assert folder_bytes(dataset) == before


def test_predict_out_is_new_empty_or_its_own(small_voc, checkpoint, tmp_path):
    from segmentnet.core.files import OWNER_FILE, mark_owned

    image = sorted((small_voc / "voc2012" / "val" / "images").iterdir())[0]
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    status, err = run_predict(checkpoint, [image], users)
    assert status == 2 and f"--out {users} already holds files that Predict did not write" in err
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("mine")
    status, err = run_predict(checkpoint, [image], afile)
    assert status == 2 and f"--out {afile} is an existing file" in err and "Traceback" not in err
    assert afile.read_text() == "mine"
    report = tmp_path / "report_files"
    report.mkdir()
    mark_owned(report, "Report")
    status, err = run_predict(checkpoint, [image], report)
    assert status == 2 and "written by Report, not Predict" in err
    assert sorted(p.name for p in report.iterdir()) == [OWNER_FILE]
    # New, empty, and its own (a second run into the same folder) are accepted.
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):
        assert run_predict(checkpoint, [image], out)[0] == 0
        assert (out / "masks" / f"{image.stem}.png").is_file()


@pytest.mark.parametrize("case", ["bomb", "not an image", "mask of another size", "limit 0", "limit -1",
                                  "checkpoint is a folder"])
def test_predict_bad_inputs_are_one_line_errors_before_any_output(small_voc, checkpoint, tmp_path, case):
    from conftest import bomb_png

    val = small_voc / "voc2012" / "val"
    good = sorted((val / "images").iterdir())[:2]
    inputs, extra, ckpt, expected = list(good), ["--batch-size", "1"], checkpoint, None
    if case == "bomb":
        inputs.append(bomb_png(tmp_path / "bomb.png"))
        expected = f"error: {tmp_path / 'bomb.png'}: refused, the image declares more pixels than"
    elif case == "not an image":
        (tmp_path / "zz.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        inputs.append(tmp_path / "zz.jpg")
        expected = f"error: {tmp_path / 'zz.jpg'}: cannot be read as an image"
    elif case == "mask of another size":
        masks = tmp_path / "masks"
        masks.mkdir()
        for image in good:
            Image.new("P", (7, 5)).save(masks / f"{image.stem}.png")
        extra += ["--masks", str(masks)]
        expected = f"error: {masks / good[0].stem}.png is 7x5 but its image {good[0]} is"
    elif case.startswith("limit"):
        extra += ["--limit", case.split()[1]]
        expected = f"error: --limit must be >= 1 (the number of images to predict), got {case.split()[1]}"
    else:
        ckpt = tmp_path
        expected = f"error: checkpoint {tmp_path} is a folder, not a checkpoint file"
    status, err = run_predict(ckpt, inputs, tmp_path / "pred", *extra)
    assert status == 2 and err.startswith(expected) and "Traceback" not in err
    assert not (tmp_path / "pred").exists()                    # nothing half-written


def test_predict_names_a_folder_without_images_and_a_missing_checkpoint(small_voc, checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jpg").mkdir()                      # a folder named like an image is no image
    status, err = run_predict(checkpoint, [tmp_path / "empty"], tmp_path / "pred")
    assert status == 2 and f"input {str(tmp_path / 'empty')!r} is no image file, no folder holding images" in err
    status, err = run_predict(tmp_path / "missing.pt", [small_voc / "voc2012" / "val" / "images"], tmp_path / "pred")
    assert status == 2 and "missing.pt not found" in err and not (tmp_path / "pred").exists()


def test_a_link_planted_in_its_own_out_never_redirects_a_write(small_voc, checkpoint, tmp_path):
    import shutil

    dataset = tmp_path / "data" / "voc2012"
    shutil.copytree(small_voc / "voc2012", dataset)
    image = sorted((dataset / "val" / "images").iterdir())[0]
    out = tmp_path / "pred"
    assert run_predict(checkpoint, [image], out)[0] == 0      # Predict's own folder now
    before = folder_bytes(dataset)
    shutil.rmtree(out / "masks")
    (out / "masks").symlink_to(dataset / "val" / "masks")     # its masks would replace the ground truth
    status, err = run_predict(checkpoint, [image], out)
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"error: --out {out / 'masks'} is a link (to {dataset / 'val' / 'masks'})"), err
    assert folder_bytes(dataset) == before


def test_predict_never_writes_into_extracted_data(small_voc, checkpoint):
    from segmentnet.datasets import voc2012

    raw = small_voc / "raw" / voc2012.ARCHIVE.stem            # DataExtract's folder (only its marker marks it)
    image = sorted((small_voc / "voc2012" / "val" / "images").iterdir())[0]
    status, err = run_predict(checkpoint, [image], raw / "pred")
    assert status == 2 and err.startswith(f"error: --out {raw / 'pred'} is inside the extracted data"), err
    assert not (raw / "pred").exists()


def test_predict_names_an_input_folder_it_cannot_read(small_voc, checkpoint, tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import ROOT, unprivileged

    prefix = unprivileged()
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(sorted((small_voc / "voc2012" / "val" / "images").iterdir())[0], locked)
    locked.chmod(0)
    try:
        result = subprocess.run([*prefix, sys.executable, str(ROOT / "Predict.py"), str(checkpoint), str(locked),
                                 "--out", str(tmp_path / "pred"), "--device", "cpu", "--no-progress"],
                                capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: input {str(locked)!r} cannot be read: Permission denied"), result.stderr
    assert not (tmp_path / "pred").exists()
