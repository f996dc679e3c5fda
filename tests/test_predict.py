"""Predict.py: the pictures it writes, and the class-index PNG read back as the same indices."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import Predict
from results_helpers import read_png, tiny_segmentnet_checkpoint
from segmentnet.inference import run_model
from segmentnet.visualize import GAP


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
    from segmentnet.cli import run_main

    assert run_main(Predict.main, [str(checkpoint), str(tmp_path / "nope*.jpg"), "--out", str(tmp_path)]) == 2
    assert "nope*.jpg" in capsys.readouterr().err
