"""ADE20K as the MIT Scene Parsing benchmark: ADEChallengeData2016.zip.

Official layout inside the archive:
    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_NNNNNNNN.png
    ADEChallengeData2016/objectInfo150.txt, sceneCategories.txt
Annotations are greyscale PNGs with values 0..150: 0 is 'other' (not evaluated) and becomes 255,
k becomes class k-1. 20210 training / 2000 validation images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..preparation import synthetic
from ..preparation.archive import Archive
from .common import DatasetInfo, Pair, read_index_array
from .voc2012 import voc_palette

# The first name of each of the 150 classes of objectInfo150.txt, in its order (Idx 1..150).
CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence',
    'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column',
    'signboard', 'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator',
    'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway',
    'river', 'bridge', 'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
    'streetlight', 'booth', 'television', 'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
    'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt',
    'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
    'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase',
    'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board',
    'shower', 'radiator', 'glass', 'clock', 'flag',
)
PALETTE = tuple(voc_palette(len(CLASSES) + 1)[1:])  # VOC's colour map without its black
ROOT = "ADEChallengeData2016"
ARCHIVE = Archive(
    filename="ADEChallengeData2016.zip",
    md5="7328b3957e407ddae1d3cbf487f149ef",
    url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    required_prefix=f"{ROOT}/annotations/",
    max_member_bytes=32 << 20,
)
SPLITS = {"train": "training", "val": "validation"}
LABEL_HINT = (f" ADE20K annotations are greyscale PNGs of values 0..{len(CLASSES)} "
              f"(0 = 'other'), from {ROOT}/annotations/.")


def list_pairs(raw_root: Path) -> dict[str, list[Pair]]:
    root = Path(raw_root) / ARCHIVE.stem / ROOT
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'} not found: extract {ARCHIVE.filename} first "
                        f"(DataExtract.py --dataset ade20k)")
    return {split: [Pair(image.stem, image, root / "annotations" / folder / f"{image.stem}.png")
                    for image in sorted((root / "images" / folder).glob("*.jpg"))]
            for split, folder in SPLITS.items()}


def read_label(path: Path) -> np.ndarray:
    raw = read_index_array(path, LABEL_HINT)
    values = np.unique(raw)
    bad = values[values > len(CLASSES)]
    if bad.size:
        binary = " It looks like a binary 0/255 mask." if set(values.tolist()) <= {0, 255} else ""
        raise DataError(f"{path}: values {bad.tolist()[:10]} are outside ADE20K's 0..{len(CLASSES)}.{binary}{LABEL_HINT}")
    # 0 ('other') -> 255; k -> k - 1 (uint8 wrap-around turns 0 - 1 into 255)
    return (raw.astype(np.uint8) - np.uint8(1)).astype(np.uint8)


# ----------------------------------------------------------------------------- synthetic archive

WALL = 1
SYNTHETIC_STYLES = [
    synthetic.ObjectStyle(8, "rectangle", (170, 60, 60)),      # bed
    synthetic.ObjectStyle(5, "triangle", (40, 150, 50)),       # tree
    synthetic.ObjectStyle(13, "ellipse", (220, 170, 140)),     # person
    synthetic.ObjectStyle(23, "diamond", (60, 70, 200)),       # painting
    synthetic.ObjectStyle(37, "circle", (240, 220, 80)),       # lamp
]
SYNTHETIC_COUNTS = {"train": 100, "val": 30}
SYNTHETIC_SIZES = (96, 160)  # ADE20K's images vary in size


def object_info(counts: dict[str, int]) -> bytes:
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    lines += [f"{i}\t0.0000\t{counts.get('train', 0)}\t{counts.get('val', 0)}\t{name}"
              for i, name in enumerate(CLASSES, start=1)]
    return ("\n".join(lines) + "\n").encode()


def synthetic_files(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                    sizes: tuple[int, int] = SYNTHETIC_SIZES) -> dict[str, bytes]:
    """The members of a synthetic ADEChallengeData2016.zip: JPEGs, 0..150 PNGs and the two lists."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {f"{ROOT}/objectInfo150.txt": object_info(counts)}
    scenes = []
    for split, count in counts.items():
        folder, prefix = SPLITS[split], {"train": "ADE_train", "val": "ADE_val"}[split]
        for index in range(1, count + 1):
            stem = f"{prefix}_{index:08d}"
            h, w = synthetic.scene_size(rng, *sizes)
            # unannotated outlines ('other', 0) around objects, as in ADE's annotations
            image, label = synthetic.draw_scene(rng, h, w, SYNTHETIC_STYLES, background_label=WALL, border_label=0)
            files[f"{ROOT}/images/{folder}/{stem}.jpg"] = synthetic.encode(Image.fromarray(image), "JPEG", quality=92)
            files[f"{ROOT}/annotations/{folder}/{stem}.png"] = synthetic.encode(Image.fromarray(label, mode="L"), "PNG")
            scenes.append(f"{stem} bedroom")
    files[f"{ROOT}/sceneCategories.txt"] = ("\n".join(scenes) + "\n").encode()
    return files


def make_synthetic(downloads: Path, seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                   sizes: tuple[int, int] = SYNTHETIC_SIZES) -> list[Path]:
    return [synthetic.write_zip(Path(downloads) / ARCHIVE.filename, synthetic_files(seed, counts, sizes))]


DATASET = DatasetInfo(
    name="ade20k",
    classes=CLASSES,
    palette=PALETTE,
    archives=(ARCHIVE,),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
)
