"""PASCAL VOC 2012 segmentation: VOCtrainval_11-May-2012.tar.

Official layout inside the archive:
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNG, values = class index, 255 = void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   (1464 / 1449 / 2913 ids)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..preparation import synthetic
from ..preparation.archive import Archive
from .common import DatasetInfo, Pair, read_index_mask, read_split_list

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """VOC's colour map: the bits of the class index spread over the high bits of R, G and B."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


PALETTE = tuple(voc_palette(len(CLASSES)))
ROOT = "VOCdevkit/VOC2012"
ARCHIVE = Archive(
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    required_prefix=f"{ROOT}/ImageSets/Segmentation/",
    max_member_bytes=16 << 20,
)


def voc_root(raw_root: Path) -> Path:
    return raw_root / ARCHIVE.stem / ROOT


def pairs_for_ids(root: Path, ids: list[tuple[str, str]]) -> list[Pair]:
    """Pairs of (id, where it is listed), as read_split_list returns them."""
    return [Pair(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png", where)
            for i, where in ids]


def list_pairs(raw_root: Path) -> dict[str, list[Pair]]:
    root = voc_root(raw_root)
    sets = root / "ImageSets" / "Segmentation"
    return {split: pairs_for_ids(root, read_split_list(sets / f"{split}.txt", raw_root / ARCHIVE.stem))
            for split in ("train", "val")}


def read_label(path: Path) -> np.ndarray:
    return read_index_mask(path, len(CLASSES))


# Synthetic archive: five VOC classes, each with its own shape and colour.
SYNTHETIC_STYLES = [
    synthetic.ObjectStyle(1, "triangle", (40, 90, 220)),     # aeroplane
    synthetic.ObjectStyle(5, "diamond", (40, 180, 60)),      # bottle
    synthetic.ObjectStyle(7, "rectangle", (210, 40, 40)),    # car
    synthetic.ObjectStyle(8, "circle", (235, 150, 30)),      # cat
    synthetic.ObjectStyle(15, "ellipse", (200, 120, 170)),   # person
]
SYNTHETIC_COUNTS = {"train": 160, "val": 48, "unlabelled": 12}


def synthetic_scenes(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS):
    """(split, image id, RGB image, label with 255 borders) of each synthetic scene, in order."""
    rng = np.random.default_rng(seed)
    serial = 0
    for split, count in counts.items():
        for _ in range(count):
            serial += 1
            h, w = synthetic.scene_size(rng)
            image, label = synthetic.draw_scene(rng, h, w, SYNTHETIC_STYLES, border_label=255)
            yield split, f"{2007 + serial % 6}_{serial:06d}", image, label


def voc_files(scenes) -> dict[str, bytes]:
    """The members of a VOCtrainval archive holding these scenes: ids, JPEGs and palette PNGs."""
    from PIL import Image

    files: dict[str, bytes] = {}
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for split, image_id, image, label in scenes:
        files[f"{ROOT}/JPEGImages/{image_id}.jpg"] = synthetic.encode(Image.fromarray(image), "JPEG", quality=92)
        if split == "unlabelled":  # JPEGImages holds many images that have no segmentation
            continue
        files[f"{ROOT}/SegmentationClass/{image_id}.png"] = synthetic.palette_png(label, list(PALETTE))
        ids[split].append(image_id)
    sets = f"{ROOT}/ImageSets/Segmentation"
    for split in ("train", "val"):
        files[f"{sets}/{split}.txt"] = ("\n".join(sorted(ids[split])) + "\n").encode()
    files[f"{sets}/trainval.txt"] = ("\n".join(sorted(ids["train"] + ids["val"])) + "\n").encode()
    return files


def synthetic_files(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS) -> dict[str, bytes]:
    """The members of a synthetic VOCtrainval archive: ids, JPEGs and palette PNGs."""
    return voc_files(synthetic_scenes(seed, counts))


def make_synthetic(downloads: Path, seed: int) -> list[Path]:
    return [synthetic.write_tar(Path(downloads) / ARCHIVE.filename, synthetic_files(seed))]


DATASET = DatasetInfo(
    name="voc2012",
    classes=CLASSES,
    palette=PALETTE,
    archives=(ARCHIVE,),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
)

