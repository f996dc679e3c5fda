"""DataSeparate: the common layout, masks read as indices (real VOC sample too), bad pairs named, and ids
listed twice refused."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import DataSeparate
from conftest import make_small_voc, realdata
from segmentnet.archive import DataError
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

