"""Cityscapes, ADE20K, KITTI Road and VOC+SBD: synthetic archives through the three scripts, exact
conversion of the genuine samples, the label checks, and class weights in the loss."""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import realdata, tiny_train_config
from PIL import Image

import DataExtract
import DataSeparate
from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.datasets import ade20k, cityscapes, get_dataset, kitti_road, voc2012, voc2012_aug
from segmentnet.datasets.separate import separate
from segmentnet.preparation import synthetic
from segmentnet.training.engine import train

# Small archives: few images, small sizes (the defaults are for the demo).
SMALL = {
    "cityscapes": lambda d, seed: cityscapes.make_synthetic(d, seed, {"train": 8, "val": 4, "test": 2}, (96, 48)),
    "ade20k": lambda d, seed: ade20k.make_synthetic(d, seed, {"train": 8, "val": 4}, (48, 72)),
    "kitti_road": lambda d, seed: kitti_road.make_synthetic(d, seed, {"training": 4, "testing": 1}, (120, 36)),
    "voc2012_aug": lambda d, seed: voc2012_aug.make_synthetic(d, seed, {"train": 8, "val": 4, "unlabelled": 3}),
}

# Cityscapes label id -> train id, from the table of labels.py (written out again, independently).
CITYSCAPES_TABLE = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def extract_small(name: str, root: Path) -> Path:
    """The small synthetic archives of `name` through DataExtract.main; returns the data folder."""
    downloads, data = root / "downloads", root / "data"
    SMALL[name](downloads, 0)
    assert DataExtract.main(["--dataset", name, "--downloads", str(downloads), "--data-dir", str(data),
                             "--no-verify"]) == 0
    return data


def extract_and_separate(name: str, root: Path, *separate_args: str) -> Path:
    """The small synthetic archives of `name` through DataExtract.main and DataSeparate.main."""
    data = extract_small(name, root)
    assert DataSeparate.main(["--dataset", name, "--data-dir", str(data), "--workers", "1", *separate_args]) == 0
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """name -> data folder with that dataset separated (made once per module; read only)."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = extract_and_separate(name, tmp_path_factory.mktemp(name))
        return made[name]
    return get


def stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir()} if folder.is_dir() else set()


def raw_ids(path: Path) -> list[str]:
    return path.read_text().split()


# ----------------------------------------------------------------------------- the three scripts


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "kitti_road", "voc2012_aug"])
def test_synthetic_archive_extracts_separates_and_trains(name, prepared, tmp_path):
    data = prepared(name)
    info = json.loads((data / name / "dataset.json").read_text())
    assert info["num_classes"] == get_dataset(name).num_classes
    for split, count in info["counts"].items():
        assert len(stems(data / name / split / "images")) == count
    assert sum(info["pixel_counts"]["train"]) > 0
    summary = train(tiny_train_config(data, tmp_path / "run", dataset=name))
    assert summary["epoch"] == 1
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["train_loss"]) and len(record["val_per_class_iou"]) == info["num_classes"]


def test_cityscapes_pairs_and_conversion(prepared):
    data = prepared("cityscapes")
    out = data / "cityscapes"
    assert json.loads((out / "dataset.json").read_text())["counts"] == {"train": 8, "val": 4}  # no test split
    for split in ("train", "val"):
        raw_images = list((data / "raw" / "leftImg8bit_trainvaltest" / "leftImg8bit" / split).glob("*/*.png"))
        assert stems(out / split / "images") == {p.name.replace("_leftImg8bit.png", "") for p in raw_images}
    stem = sorted(stems(out / "train" / "masks"))[0]
    city = stem.split("_")[0]
    label_ids = np.array(Image.open(data / "raw" / "gtFine_trainvaltest" / "gtFine" / "train" / city /
                                    f"{stem}_gtFine_labelIds.png"))
    assert {1, 3, 7, 23} <= set(np.unique(label_ids).tolist())  # void ids and classes are both exercised
    expected = np.vectorize(lambda v: CITYSCAPES_TABLE.get(int(v), 255))(label_ids)
    assert np.array_equal(np.array(Image.open(out / "train" / "masks" / f"{stem}.png")), expected)


def test_ade20k_pairs_and_conversion(prepared):
    data = prepared("ade20k")
    root = data / "raw" / "ADEChallengeData2016" / "ADEChallengeData2016"
    assert (root / "objectInfo150.txt").exists() and (root / "sceneCategories.txt").exists()
    for split, folder in (("train", "training"), ("val", "validation")):
        assert stems(data / "ade20k" / split / "masks") == stems(root / "annotations" / folder)
    stem = sorted(stems(root / "annotations" / "training"))[0]
    raw = np.array(Image.open(root / "annotations" / "training" / f"{stem}.png"))
    assert 0 in raw and raw.max() > 1
    expected = np.array([[255 if v == 0 else v - 1 for v in row] for row in raw.tolist()])
    assert np.array_equal(np.array(Image.open(data / "ade20k" / "train" / "masks" / f"{stem}.png")), expected)


def test_kitti_road_split_test_images_and_colours(prepared, tmp_path):
    data = prepared("kitti_road")
    out = data / "kitti_road"
    train, val = stems(out / "train" / "images"), stems(out / "val" / "images")
    training = stems(data / "raw" / "data_road" / "data_road" / "training" / "image_2")
    assert train | val == training and not train & val
    for cat in ("um", "umm", "uu"):  # 4 per category: round(0.6) = 1 held out of each
        assert len([s for s in val if s.split("_")[0] == cat]) == 1
    assert stems(out / "test" / "images") == {f"{c}_000000" for c in ("um", "umm", "uu")}
    assert not (out / "test" / "masks").exists()
    stem = sorted(train)[0]
    gt = np.array(Image.open(data / "raw" / "data_road" / "data_road" / "training" / "gt_image_2" /
                             f"{stem.replace('_', '_road_')}.png"))
    colours = {(255, 0, 255): 1, (255, 0, 0): 0, (0, 0, 0): 255}
    expected = np.array([[colours[tuple(px)] for px in row] for row in gt.tolist()])
    assert np.array_equal(np.array(Image.open(out / "train" / "masks" / f"{stem}.png")), expected)

    # another fraction and seed: a new split, the same for the same seed
    def split_with(*args):
        assert DataSeparate.main(["--dataset", "kitti_road", "--data-dir", str(data), "--workers", "1",
                                  "--force", *args]) == 0
        return stems(out / "val" / "images")
    half = split_with("--val-fraction", "0.5", "--split-seed", "3")
    assert len(half) == 6 and half == split_with("--val-fraction", "0.5", "--split-seed", "3")
    assert json.loads((out / "dataset.json").read_text())["options"] == {"val_fraction": 0.5, "split_seed": 3}
    # a finished separation with other options is not silently kept
    assert call_main(DataSeparate.main, ["--dataset", "kitti_road", "--data-dir", str(data),
                                        "--val-fraction", "0.25"]) == 2
    split_with()  # back to the defaults for the other tests


def test_voc2012_aug_train_is_voc_and_sbd_minus_voc_val(prepared):
    data = prepared("voc2012_aug")
    voc_sets = data / "raw" / "VOCtrainval_11-May-2012" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    sbd = data / "raw" / "benchmark" / "benchmark_RELEASE" / "dataset"
    voc_val = set(raw_ids(voc_sets / "val.txt"))
    expected_train = (set(raw_ids(voc_sets / "train.txt")) | set(raw_ids(sbd / "train.txt"))
                      | set(raw_ids(sbd / "val.txt"))) - voc_val
    out = data / "voc2012_aug"
    assert stems(out / "train" / "masks") == expected_train
    assert stems(out / "val" / "masks") == voc_val
    assert (set(raw_ids(sbd / "train.txt")) | set(raw_ids(sbd / "val.txt"))) & voc_val, \
        "the synthetic SBD must hold VOC val ids, which train_aug leaves out"
    sbd_only = sorted(expected_train - set(raw_ids(voc_sets / "train.txt")))
    from scipy.io import loadmat

    segmentation = loadmat(sbd / "cls" / f"{sbd_only[0]}.mat")["GTcls"][0, 0]["Segmentation"]
    assert np.array_equal(np.array(Image.open(out / "train" / "masks" / f"{sbd_only[0]}.png")), segmentation)


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "kitti_road", "voc2012_aug"])
def test_synthetic_archives_are_deterministic(name, tmp_path):
    first = SMALL[name](tmp_path / "a", 5)
    again = SMALL[name](tmp_path / "b", 5)
    other = SMALL[name](tmp_path / "c", 6)
    assert [p.name for p in first] == [a.filename for a in get_dataset(name).archives]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


# ----------------------------------------------------------------------------- the genuine samples


def copy_tree(pairs: dict[str, Path], root: Path) -> Path:
    """A raw folder in the official layout holding copies of the genuine samples (not links: a raw
    file that leads out of its raw folder is refused)."""
    for relative, source in pairs.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / relative)
    return root


def test_real_cityscapes_sample_converts_by_the_table(tmp_path):
    real = realdata("cityscapes")
    stem = "aachen_000000_000019"
    files = {}
    for split, name in (("train", stem), ("val", "aachen_000001_000019")):  # the one sample, in both splits
        files[f"raw/leftImg8bit_trainvaltest/leftImg8bit/{split}/aachen/{name}_leftImg8bit.png"] = \
            real / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png"
        for kind in ("labelIds", "instanceIds"):
            files[f"raw/gtFine_trainvaltest/gtFine/{split}/aachen/{name}_gtFine_{kind}.png"] = \
                real / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_{kind}.png"
    data = copy_tree(files, tmp_path)
    separate(cityscapes.DATASET, data, workers=1, progress=False)
    label_ids = np.array(Image.open(real / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"))
    expected = np.full(label_ids.shape, 255)
    for label_id, train_id in CITYSCAPES_TABLE.items():
        expected[label_ids == label_id] = train_id
    got = np.array(Image.open(data / "cityscapes" / "train" / "masks" / f"{stem}.png"))
    assert np.array_equal(got, expected)
    assert {0, 1, 3} <= set(np.unique(label_ids).tolist())  # void ids present, all -> 255
    assert (got == 255).sum() == np.isin(label_ids, list(CITYSCAPES_TABLE), invert=True).sum()


def test_real_ade20k_sample_converts_by_the_shift(tmp_path):
    real = realdata("ade20k")
    files = {}
    for folder, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        files[f"raw/ADEChallengeData2016/ADEChallengeData2016/images/{folder}/{name}.jpg"] = \
            real / "images" / "validation" / "ADE_val_00000001.jpg"
        files[f"raw/ADEChallengeData2016/ADEChallengeData2016/annotations/{folder}/{name}.png"] = \
            real / "annotations" / "validation" / "ADE_val_00000001.png"
    data = copy_tree(files, tmp_path)
    separate(ade20k.DATASET, data, workers=1, progress=False)
    raw = np.array(Image.open(real / "annotations" / "validation" / "ADE_val_00000001.png"))
    expected = np.array([[255 if v == 0 else v - 1 for v in row] for row in raw.tolist()])
    assert np.array_equal(np.array(Image.open(data / "ade20k" / "val" / "masks" / "ADE_val_00000001.png")), expected)
    names = [line.split("\t")[4].split(",")[0].strip()
             for line in (real / "objectInfo150.txt").read_text().splitlines()[1:]]
    assert list(ade20k.CLASSES) == names


def test_real_kitti_sample_converts_by_the_colours(tmp_path):
    real = realdata("kitti_road")
    base = "raw/data_road/data_road"
    files = {f"{base}/testing/image_2/um_000000.png": real / "testing" / "image_2" / "um_000000.png"}
    for number in ("000000", "000001"):  # two images, so that one can be held out for validation
        files[f"{base}/training/image_2/um_{number}.png"] = real / "training" / "image_2" / "um_000000.png"
        for kind in ("road", "lane"):
            files[f"{base}/training/gt_image_2/um_{kind}_{number}.png"] = \
                real / "training" / "gt_image_2" / f"um_{kind}_000000.png"
    data = copy_tree(files, tmp_path)
    summary = separate(kitti_road.DATASET, data, workers=1, progress=False)
    assert summary["counts"] == {"train": 1, "val": 1, "test": 1}
    gt = np.array(Image.open(real / "training" / "gt_image_2" / "um_road_000000.png"))
    colours = {(255, 0, 255): 1, (255, 0, 0): 0, (0, 0, 0): 255}
    expected = np.array([[colours[tuple(px)] for px in row] for row in gt.tolist()])
    for split in ("train", "val"):
        (mask,) = (data / "kitti_road" / split / "masks").iterdir()
        assert np.array_equal(np.array(Image.open(mask)), expected)
    assert summary["pixel_counts"]["train"] == [int((expected == 0).sum()), int((expected == 1).sum())]


# ----------------------------------------------------------------------------- label checks


def save(path: Path, array: np.ndarray, mode: str) -> Path:
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    return path


def test_colour_mask_where_indices_are_expected(tmp_path):
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[:4] = (128, 64, 128)
    path = save(tmp_path / "x_gtFine_color.png", colour, "RGB")
    with pytest.raises(DataError, match=r"colour \(RGB\) mask.*gtFine_labelIds"):
        cityscapes.read_label(path)
    with pytest.raises(DataError, match=r"colour \(RGB\) mask"):
        ade20k.read_label(path)
    with pytest.raises(DataError, match=r"colour \(RGB\) mask"):
        voc2012.read_label(path)


def test_binary_mask_stored_as_0_255(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[4:] = 255
    with pytest.raises(DataError, match="0/255.*Divide the mask by 255"):
        kitti_road.read_label(save(tmp_path / "m.png", mask, "L"))
    with pytest.raises(DataError, match="binary 0/255"):
        ade20k.read_label(save(tmp_path / "a.png", mask, "L"))
    mask[4:] = 1  # the same mask as 0/1 is right
    assert np.array_equal(kitti_road.read_label(save(tmp_path / "ok.png", mask, "L")), mask)


def test_values_out_of_range(tmp_path):
    mask = np.full((8, 8), 7, dtype=np.uint8)
    mask[0, 0] = 40
    with pytest.raises(DataError, match=r"\[40\] are not Cityscapes label ids"):
        cityscapes.read_label(save(tmp_path / "c.png", mask, "L"))
    mask[0, 0] = 151
    with pytest.raises(DataError, match=r"\[151\] are outside ADE20K's 0..150"):
        ade20k.read_label(save(tmp_path / "a.png", mask, "L"))
    mask[0, 0] = 21
    with pytest.raises(DataError, match=r"\[21\] are outside the 21 classes"):
        (tmp_path / "v.png").write_bytes(synthetic.palette_png(mask, voc2012.voc_palette(256)))
        voc2012.read_label(tmp_path / "v.png")
    blended = np.zeros((8, 8, 3), dtype=np.uint8)
    blended[:, :4] = (255, 0, 255)
    blended[:, 4] = (255, 0, 128)  # what a bilinear resize makes of a boundary
    with pytest.raises(DataError, match=r"colours such as \[\(255, 0, 128\)\].*nearest"):
        kitti_road.read_label(save(tmp_path / "k.png", blended, "RGB"))


def test_sbd_mat_out_of_range_and_not_a_class_file(tmp_path):
    from scipy.io import savemat

    segmentation = np.zeros((6, 6), dtype=np.uint8)
    segmentation[0, 0] = 30
    savemat(tmp_path / "bad.mat", {"GTcls": {"Segmentation": segmentation}})
    with pytest.raises(DataError, match=r"\[30\] are outside the 21 classes"):
        voc2012_aug.read_label(tmp_path / "bad.mat")
    savemat(tmp_path / "inst.mat", {"GTinst": {"Segmentation": segmentation}})
    with pytest.raises(DataError, match="no GTcls.Segmentation"):
        voc2012_aug.read_label(tmp_path / "inst.mat")


def tiff_as_png(path: Path, array: np.ndarray, mode: str) -> Path:
    """A mask file named .png that holds a TIFF (Pillow reads the content, not the name): TIFF
    stores what PNG cannot, 32-bit signed (mode I) and floating-point (mode F) pixels."""
    Image.fromarray(array, mode=mode).save(path, format="TIFF")
    return path


@pytest.mark.parametrize("name", ["voc2012", "cityscapes", "ade20k", "kitti_road"])
def test_negative_and_fractional_labels_are_refused(tmp_path, name):
    """-1 would become 255 (or, shifted by ADE20K, 254) in a cast to uint8: refused before it."""
    read_label = get_dataset(name).read_label
    negative = np.full((8, 8), 1, dtype=np.int32)
    negative[2, 3] = -1
    with pytest.raises(DataError, match=r"neg.png: label values \[-1\] are negative"):
        read_label(tiff_as_png(tmp_path / "neg.png", negative, "I"))
    fractional = np.full((8, 8), 1.0, dtype=np.float32)
    fractional[0, :2] = (0.5, np.nan)
    with pytest.raises(DataError, match=r"frac.png: mask mode 'F'"):
        read_label(tiff_as_png(tmp_path / "frac.png", fractional, "F"))


@pytest.mark.parametrize("values,message", [
    (np.array([[0, 1.5], [2, 3]]), r"label values are float64 numbers \(e.g. \[0.0, 1.5, 2.0, 3.0\]\)"),
    (np.array([[0, np.nan], [2, 3]]), r"label values are float64 numbers \(e.g. \[0.0, 2.0, 3.0, nan\]\)"),
    (np.array([[0, -1], [2, 3]], dtype=np.int16), r"label values \[-1\] are negative"),
])
def test_sbd_mat_of_fractions_nan_or_negatives_is_refused(tmp_path, values, message):
    from scipy.io import savemat

    savemat(tmp_path / "bad.mat", {"GTcls": {"Segmentation": values}})
    with pytest.raises(DataError, match=rf"bad.mat: {message}"):
        voc2012_aug.read_label(tmp_path / "bad.mat")


def test_voc2012_aug_refuses_an_id_in_voc_train_and_val_and_one_listed_twice(tmp_path):
    """VOC val ids that SBD lists stay out of train (the documented rule, tested above); an id in
    both of VOC's lists is an image in both splits, and an id twice in one list counts twice."""
    data = extract_small("voc2012_aug", tmp_path)
    voc_sets = data / "raw" / "VOCtrainval_11-May-2012" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    sbd = data / "raw" / "benchmark" / "benchmark_RELEASE" / "dataset"
    train, val = raw_ids(voc_sets / "train.txt"), raw_ids(voc_sets / "val.txt")
    (voc_sets / "val.txt").write_text("\n".join(val + [train[1]]) + "\n")
    with pytest.raises(DataError, match=rf"'{train[1]}' is in split 'train' \({re.escape(str(voc_sets / 'train.txt'))} "
                                        rf"line 2\) and in split 'val' \({re.escape(str(voc_sets / 'val.txt'))} line "
                                        rf"{len(val) + 1}\): an image in two splits leaks"):
        separate(voc2012_aug.DATASET, data, workers=1, progress=False)
    (voc_sets / "val.txt").write_text("\n".join(val) + "\n")
    sbd_train = raw_ids(sbd / "train.txt")
    (sbd / "train.txt").write_text("\n".join(sbd_train + [sbd_train[0]]) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(sbd / 'train.txt'))} line {len(sbd_train) + 1}: the id "
                                        rf"'{sbd_train[0]}' is listed again \(first on line 1\)"):
        separate(voc2012_aug.DATASET, data, workers=1, progress=False)
    assert not (data / "voc2012_aug").exists()


def test_globbed_files_named_twice_or_leading_out_are_refused(tmp_path):
    """Datasets without lists: the same name in two Cityscapes cities would write one output over
    the other; an ADE20K image that is a link out of its raw folder is never read."""
    data = extract_small("cityscapes", tmp_path / "cityscapes")
    images = data / "raw" / "leftImg8bit_trainvaltest" / "leftImg8bit" / "train"
    labels = data / "raw" / "gtFine_trainvaltest" / "gtFine" / "train"
    first = sorted(images.glob("*/*_leftImg8bit.png"))[0]
    other_city = next(p.name for p in images.iterdir() if p.name != first.parent.name)
    shutil.copyfile(first, images / other_city / first.name)
    label = first.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    shutil.copyfile(labels / first.parent.name / label, labels / other_city / label)
    stem = first.name.replace("_leftImg8bit.png", "")
    with pytest.raises(DataError, match=rf"'{stem}' is named twice in split 'train' \(also by {re.escape(str(first))}\)"):
        separate(cityscapes.DATASET, data, workers=1, progress=False)
    assert not (data / "cityscapes").exists()

    data = extract_small("ade20k", tmp_path / "ade20k")
    outside = tmp_path / "victim.jpg"
    outside.write_bytes(synthetic.encode(Image.new("RGB", (48, 48)), "JPEG"))
    image = sorted((data / "raw" / "ADEChallengeData2016" / "ADEChallengeData2016" / "images" / "validation").iterdir())[0]
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(DataError, match=rf"^{re.escape(str(image))}: {re.escape(str(image))} leads to "
                                        rf"{re.escape(str(outside))}, outside"):
        separate(ade20k.DATASET, data, workers=1, skip_bad=True, progress=False)
    assert not (data / "ade20k").exists()


def test_missing_scipy_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now fails
    with pytest.raises(DataError, match="pip install scipy"):
        voc2012_aug.read_label(tmp_path / "x.mat")


def test_images_without_masks_and_colour_masks_through_data_separate(tmp_path, capsys):
    data = tmp_path / "data"
    SMALL["cityscapes"](tmp_path / "downloads", 0)
    assert DataExtract.main(["--dataset", "cityscapes", "--downloads", str(tmp_path / "downloads"),
                             "--data-dir", str(data), "--no-verify"]) == 0
    gt = data / "raw" / "gtFine_trainvaltest" / "gtFine"
    missing = sorted(gt.glob("train/*/*_labelIds.png"))[0]
    kept = missing.read_bytes()
    missing.unlink()
    argv = ["--dataset", "cityscapes", "--data-dir", str(data), "--workers", "1"]
    assert call_main(DataSeparate.main, argv) == 2
    assert "1 of 8 images in split 'train' have no mask" in capsys.readouterr().err
    assert DataSeparate.main(argv + ["--skip-bad"]) == 0
    assert "skipped train/" in capsys.readouterr().out
    missing.write_bytes(kept)
    coloured = sorted(gt.glob("val/*/*_labelIds.png"))[0]
    coloured.write_bytes(coloured.with_name(coloured.name.replace("labelIds", "color")).read_bytes())
    assert call_main(DataSeparate.main, argv + ["--force"]) == 2
    assert "colour (RGB) mask" in capsys.readouterr().err


def test_dataset_options_are_checked(prepared):
    data = prepared("cityscapes")
    with pytest.raises(DataError, match="cityscapes takes no option val_fraction"):
        DataSeparate.main(["--dataset", "cityscapes", "--data-dir", str(data), "--val-fraction", "0.2"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        kitti_road.list_pairs(data / "raw", val_fraction=1.5)


# ----------------------------------------------------------------------------- class weights


def independent_weights(counts: list[int], rule: str) -> list[float]:
    total = sum(counts)
    freq = [c / total for c in counts]
    present = [f for f in freq if f > 0]
    if rule == "median_freq":
        middle = statistics.median(present)
        return [middle / f if f > 0 else 0.0 for f in freq]
    if rule == "enet":
        return [1 / math.log(1.02 + f) if f > 0 else 0.0 for f in freq]
    raw = [1 / f if f > 0 else 0.0 for f in freq]
    return [w / (sum(raw) / len(present)) for w in raw]


def test_class_weight_rules_match_their_definitions():
    from segmentnet.training.optim import class_weights_from_counts

    counts = [500, 0, 120, 30, 7, 2000]  # an absent class, and an even number of present ones
    for rule in ("median_freq", "inverse_freq", "enet"):
        expected = torch.tensor(independent_weights(counts, rule), dtype=torch.float32)
        assert torch.allclose(class_weights_from_counts(counts, rule), expected, rtol=1e-5), rule
    assert class_weights_from_counts(counts, "none") is None


@pytest.mark.parametrize("loss,rule", [("ce", "median_freq"), ("jaccard", "inverse_freq")])
def test_class_weights_reach_the_loss(loss, rule, prepared, tmp_path, monkeypatch):
    from segmentnet.training import engine

    data = prepared("ade20k")
    counts = json.loads((data / "ade20k" / "dataset.json").read_text())["pixel_counts"]["train"]
    built = []

    def capture(name, ignore_index=255, weight=None):
        built.append(engine.LOSSES[name](ignore_index, weight))
        return built[-1]

    monkeypatch.setattr(engine, "build_loss", capture)
    train(tiny_train_config(data, tmp_path / "run", dataset="ade20k", loss=loss, class_weights=rule))
    weight = built[0].weight
    assert torch.allclose(weight, torch.tensor(independent_weights(counts, rule), dtype=torch.float32), rtol=1e-5)
    assert not torch.allclose(weight, torch.ones_like(weight))

    # and the weights change the loss as their definition says
    torch.manual_seed(0)
    logits, target = torch.randn(2, 150, 4, 4), torch.tensor([[[0, 4, 7, 255]] * 4] * 2)  # classes the data has
    valid = target != 255
    if loss == "ce":
        nll = -torch.log_softmax(logits, 1).gather(1, target.clamp(max=149).unsqueeze(1)).squeeze(1)
        w = weight[target.clamp(max=149)] * valid
        expected_loss = (w * nll).sum() / w.sum()
    else:
        probs = torch.softmax(logits, 1) * valid.unsqueeze(1)
        one_hot = torch.nn.functional.one_hot(target.clamp(max=149), 150).permute(0, 3, 1, 2) * valid.unsqueeze(1)
        inter = (probs * one_hot).sum((0, 2, 3))
        iou = inter / ((probs + one_hot).sum((0, 2, 3)) - inter + 1e-7)
        expected_loss = 1 - (iou * weight).sum() / weight.sum()
    assert torch.allclose(built[0](logits, target), expected_loss, atol=1e-6)
    assert not torch.allclose(engine.LOSSES[loss](255, None)(logits, target), expected_loss)
