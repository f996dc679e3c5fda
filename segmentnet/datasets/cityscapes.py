"""Cityscapes (fine annotations): gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip.

Official layout inside the two archives:
    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,instanceIds,color}.png
                                                          (and _gtFine_polygons.json)
Training uses the labelIds files, mapped to the 19 train ids of cityscapesScripts' labels.py;
every other id becomes 255. train 2975 / val 500 images; the test split's labels are dummies,
so it is left out.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..preparation import synthetic
from ..preparation.archive import Archive
from .common import IGNORE_INDEX, DatasetInfo, Pair, read_index_array

# (label id, train id, name, colour) of the 19 evaluated classes, as in cityscapesScripts' labels.py.
TRAIN_LABELS = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)
CLASSES = tuple(name for _, _, name, _ in TRAIN_LABELS)
PALETTE = tuple(colour for _, _, _, colour in TRAIN_LABELS)
MAX_LABEL_ID = 33  # label ids run 0..33 (license plate, -1, is not written into labelIds files)

ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id, _, _ in TRAIN_LABELS:
    ID_TO_TRAIN_ID[_label_id] = _train_id

GT_ARCHIVE = Archive(
    filename="gtFine_trainvaltest.zip",
    md5="4237c19de34c8a376e9ba46b495d6f66",
    url=None,  # https://www.cityscapes-dataset.com/downloads/ (login required)
    required_prefix="gtFine/",
    max_member_bytes=16 << 20,
)
IMAGE_ARCHIVE = Archive(
    filename="leftImg8bit_trainvaltest.zip",
    md5="0a6e97e94b616a514066c9e2adb0c97f",
    url=None,
    required_prefix="leftImg8bit/",
    max_member_bytes=16 << 20,
)
SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LABEL_HINT = (" Cityscapes training reads the *_gtFine_labelIds.png files (mode L, label ids 0..33), "
              "not *_gtFine_color.png, *_instanceIds.png or converted trainIds files.")


def list_pairs(raw_root: Path) -> dict[str, list[Pair]]:
    images_root = Path(raw_root) / IMAGE_ARCHIVE.stem / "leftImg8bit"
    labels_root = Path(raw_root) / GT_ARCHIVE.stem / "gtFine"
    for root, spec in ((images_root, IMAGE_ARCHIVE), (labels_root, GT_ARCHIVE)):
        if not root.is_dir():
            raise DataError(f"{root} not found: extract {spec.filename} first (DataExtract.py --dataset cityscapes)")
    splits = {}
    for split in SPLITS:
        pairs = []
        for image in sorted((images_root / split).glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            pairs.append(Pair(stem, image, labels_root / split / image.parent.name / f"{stem}{LABEL_SUFFIX}"))
        splits[split] = pairs
    return splits


def read_label(path: Path) -> np.ndarray:
    label_ids = read_index_array(path, LABEL_HINT)
    values = np.unique(label_ids)
    bad = values[(values > MAX_LABEL_ID) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(f"{path}: values {bad.tolist()[:10]} are not Cityscapes label ids (0..{MAX_LABEL_ID}).{LABEL_HINT}")
    return ID_TO_TRAIN_ID[label_ids]


# ----------------------------------------------------------------------------- synthetic archives

# Street-like scenes: road below, sky above, objects in between; label ids as in labelIds files.
ROAD, SKY, EGO_VEHICLE, OUT_OF_ROI = 7, 23, 1, 3
SYNTHETIC_STYLES = [
    synthetic.ObjectStyle(26, "rectangle", (20, 30, 150)),     # car
    synthetic.ObjectStyle(24, "ellipse", (200, 30, 70)),       # person
    synthetic.ObjectStyle(11, "bar", (110, 110, 110)),         # building
    synthetic.ObjectStyle(21, "circle", (60, 150, 40)),        # vegetation
    synthetic.ObjectStyle(20, "diamond", (230, 220, 20)),      # traffic sign
]
HAS_INSTANCES = (24, 26)
SYNTHETIC_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin", "bielefeld")}
SYNTHETIC_COUNTS = {"train": 60, "val": 20, "test": 6}
SYNTHETIC_SIZE = (256, 128)  # width, height: Cityscapes' 2:1 shape at an eighth of its size


def synthetic_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its label ids: road background, a sky band, objects, and void ids."""
    image, label = synthetic.draw_scene(rng, height, width, SYNTHETIC_STYLES, background_label=ROAD)
    horizon = int(height * rng.uniform(0.25, 0.4))
    sky = np.zeros_like(label, dtype=bool)
    sky[:horizon] = label[:horizon] == ROAD
    image[sky] = np.clip(np.array([120, 170, 230]) + rng.normal(0, 6, size=(int(sky.sum()), 3)), 0, 255)
    label[sky] = SKY
    ego_rows = max(2, height // 16)
    image[-ego_rows:] = 30
    label[-ego_rows:] = EGO_VEHICLE
    label[:, :2] = label[:, -2:] = OUT_OF_ROI  # rectification border
    return image, label


def synthetic_files(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                    size: tuple[int, int] = SYNTHETIC_SIZE) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The members of synthetic (gtFine, leftImg8bit) archives in the official layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    gt_files: dict[str, bytes] = {"README": b"synthetic gtFine\n", "license.txt": b"synthetic data\n"}
    image_files: dict[str, bytes] = {"README": b"synthetic leftImg8bit\n", "license.txt": b"synthetic data\n"}
    colours = {label_id: colour for label_id, _, _, colour in TRAIN_LABELS}
    for split, count in counts.items():
        cities = SYNTHETIC_CITIES[split]
        for index in range(count):
            city = cities[index % len(cities)]
            stem = f"{city}_{index // len(cities):06d}_{19 + index:06d}"
            image, label = synthetic_scene(rng, width, height)
            if split == "test":  # the test split's labels are dummies: everything unlabelled
                label = np.zeros_like(label)
            image_files[f"leftImg8bit/{split}/{city}/{stem}{IMAGE_SUFFIX}"] = synthetic.encode(Image.fromarray(image), "PNG")
            folder = f"gtFine/{split}/{city}/{stem}_gtFine"
            gt_files[f"{folder}_labelIds.png"] = synthetic.encode(Image.fromarray(label, mode="L"), "PNG")
            instances = label.astype(np.int32) * np.where(np.isin(label, HAS_INSTANCES), 1000, 1)
            gt_files[f"{folder}_instanceIds.png"] = synthetic.encode(Image.fromarray(instances.astype(np.uint16)), "PNG")
            colour = np.zeros((height, width, 4), dtype=np.uint8)
            colour[..., 3] = 255
            for label_id, rgb in colours.items():
                colour[label == label_id, :3] = rgb
            gt_files[f"{folder}_color.png"] = synthetic.encode(Image.fromarray(colour, mode="RGBA"), "PNG")
            gt_files[f"{folder}_polygons.json"] = json.dumps({"imgHeight": height, "imgWidth": width,
                                                               "objects": []}).encode()
    return gt_files, image_files


def make_synthetic(downloads: Path, seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                   size: tuple[int, int] = SYNTHETIC_SIZE) -> list[Path]:
    gt_files, image_files = synthetic_files(seed, counts, size)
    return [synthetic.write_zip(Path(downloads) / GT_ARCHIVE.filename, gt_files),
            synthetic.write_zip(Path(downloads) / IMAGE_ARCHIVE.filename, image_files)]


DATASET = DatasetInfo(
    name="cityscapes",
    classes=CLASSES,
    palette=PALETTE,
    archives=(GT_ARCHIVE, IMAGE_ARCHIVE),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
)
