"""KITTI Road: data_road.zip.

Official layout inside the archive:
    data_road/training/image_2/{um,umm,uu}_NNNNNN.png         289 images in three categories
    data_road/training/gt_image_2/{cat}_road_NNNNNN.png       RGB: (255,0,255) road, (255,0,0) valid
                                                             non-road, (0,0,0) outside the valid area
    data_road/training/gt_image_2/um_lane_NNNNNN.png          ego-lane labels (not used here)
    data_road/training/calib/, data_road/testing/{image_2,calib}/   (290 unlabelled test images)
There is no official validation split: a seeded one, stratified by category, is held out of
training (val_fraction of each category). The test images form a 'test' split without masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DataError, UsageError
from ..preparation import synthetic
from ..preparation.archive import Archive
from .common import IGNORE_INDEX, DatasetInfo, Pair, decode_mask, read_index_mask

CLASSES = ("non-road", "road")
PALETTE = ((255, 0, 0), (255, 0, 255))
# ground-truth colour -> class index (black marks pixels outside the evaluated area)
COLOURS = {(255, 0, 255): 1, (255, 0, 0): 0, (0, 0, 0): IGNORE_INDEX}
ROOT = "data_road"
ARCHIVE = Archive(
    filename="data_road.zip",
    md5=None,  # none is published
    url="https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip",
    required_prefix=f"{ROOT}/training/gt_image_2/",
    max_member_bytes=16 << 20,
)
DEFAULT_VAL_FRACTION = 0.15
LABEL_HINT = (" KITTI road ground truth is the RGB data_road/training/gt_image_2/<cat>_road_NNNNNN.png, "
              "or a greyscale mask of 0 (non-road), 1 (road) and 255 (ignore).")


def category(stem: str) -> str:
    return stem.split("_")[0]


def held_out_count(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one image and never all of them."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_by_category(stems: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) stems: a seeded choice of round(fraction * n) images of each category."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cat in sorted({category(s) for s in stems}):
        members = sorted(s for s in stems if category(s) == cat)
        chosen = set(rng.permutation(len(members))[: held_out_count(len(members), fraction)].tolist())
        for index, stem in enumerate(members):
            (val if index in chosen else train).append(stem)
    return train, val


def list_pairs(raw_root: Path, val_fraction: float = DEFAULT_VAL_FRACTION, split_seed: int = 0) -> dict[str, list[Pair]]:
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    root = Path(raw_root) / ARCHIVE.stem / ROOT
    images = root / "training" / "image_2"
    if not images.is_dir():
        raise DataError(f"{images} not found: extract {ARCHIVE.filename} first (DataExtract.py --dataset kitti_road)")
    stems = [p.stem for p in sorted(images.glob("*.png"))]
    odd = [s for s in stems if "_" not in s]
    if odd:
        raise DataError(f"{images}: {odd[0]}.png is not named <category>_NNNNNN.png as KITTI's images are "
                        f"({len(odd)} such files); rename them, or move them out")
    train, val = split_by_category(stems, val_fraction, split_seed)

    def labelled(stem: str) -> Pair:
        cat, number = stem.split("_", 1)
        return Pair(stem, images / f"{stem}.png", root / "training" / "gt_image_2" / f"{cat}_road_{number}.png")

    test = [Pair(p.stem, p, None) for p in sorted((root / "testing" / "image_2").glob("*.png"))]
    return {"train": [labelled(s) for s in train], "val": [labelled(s) for s in val], "test": test}


def read_label(path: Path) -> np.ndarray:
    if "_lane_" in Path(path).name:
        raise DataError(f"{path}: a lane file (ego-lane labels), not the road ground truth; use the "
                        f"matching *_road_* file")
    mode, array = decode_mask(path)
    if mode not in ("RGB", "RGBA"):
        return read_index_mask(path, len(CLASSES), binary=True, hint=LABEL_HINT)
    rgb = array[..., :3].astype(np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    label = np.full(code.shape, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(code.shape, dtype=bool)
    for (r, g, b), index in COLOURS.items():
        match = code == (r << 16 | g << 8 | b)
        label[match] = index
        known |= match
    if not known.all():
        found = sorted({tuple(int(v) for v in c) for c in rgb[~known][:1000]})[:5]
        grey = " It is a greyscale mask saved as RGB." if all(r == g == b for r, g, b in found) else ""
        raise DataError(f"{path}: {int((~known).sum())} pixels have colours such as {found} that are not the "
                        f"ground-truth colours (255,0,255) road, (255,0,0) non-road, (0,0,0) outside.{grey} "
                        f"A resized mask must be resampled with nearest neighbour.{LABEL_HINT}")
    return label


# ----------------------------------------------------------------------------- synthetic archive

CATEGORIES = ("um", "umm", "uu")
SYNTHETIC_COUNTS = {"training": 20, "testing": 4}  # images per category
SYNTHETIC_SIZE = (240, 72)  # width, height: KITTI's 1242x375 shape, a fifth of its size
CALIB_KEYS = ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo", "Tr_cam_to_road")


def texture(rng: np.random.Generator, shape: tuple[int, int], colour, noise: float = 10) -> np.ndarray:
    return np.array(colour, dtype=np.float32) + rng.normal(0, noise, size=(*shape, 3))


def polygon_mask(width: int, height: int, points) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def synthetic_scene(rng: np.random.Generator, cat: str, width: int, height: int):
    """RGB image, road label (0, 1, 255) and ego-lane label of a road scene of one category."""
    horizon = int(height * rng.uniform(0.35, 0.5))
    centre, top_half = width * rng.uniform(0.4, 0.6), width * rng.uniform(0.03, 0.08)
    left, right = width * rng.uniform(-0.1, 0.25), width * rng.uniform(0.75, 1.1)
    road = polygon_mask(width, height, [(left, height), (centre - top_half, horizon),
                                        (centre + top_half, horizon), (right, height)])
    lane = road & polygon_mask(width, height, [((left + right) / 2, height), (centre, horizon),
                                               (centre + top_half, horizon), (right, height)])
    image = texture(rng, (height, width), rng.uniform([60, 100, 30], [110, 140, 70]), noise=14)  # verge
    image[:horizon] = texture(rng, (horizon, width), (150, 185, 225), noise=6)                  # sky
    image[road] = texture(rng, (int(road.sum()),), (92, 92, 98), noise=7)                        # asphalt
    if cat != "uu":  # marked roads: dashed white lines along the lane boundary
        ys, xs = np.nonzero(road & ~lane & np.roll(lane, -1, axis=1))
        dashes = (ys // 4) % 2 == 0
        image[ys[dashes], xs[dashes]] = 235
    label = np.where(road, 1, 0).astype(np.uint8)
    if rng.random() < 0.5:  # a parked car at the road's edge: outside the valid area
        car_w, car_h = int(width * 0.12), int(height * 0.2)
        x0 = int(np.clip(left + (right - left) * 0.1, 0, width - car_w))
        y0 = int(height * 0.65)
        image[y0:y0 + car_h, x0:x0 + car_w] = texture(rng, (car_h, car_w), (150, 30, 30))
        label[y0:y0 + car_h, x0:x0 + car_w] = IGNORE_INDEX
    lane_label = np.where(lane, 1, 0).astype(np.uint8)
    lane_label[label == IGNORE_INDEX] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label, lane_label


def colour_png(label: np.ndarray) -> bytes:
    """The ground-truth encoding: RGB colours of COLOURS."""
    from PIL import Image

    rgb = np.zeros((*label.shape, 3), dtype=np.uint8)
    for colour, index in COLOURS.items():
        rgb[label == index] = colour
    return synthetic.encode(Image.fromarray(rgb, mode="RGB"), "PNG")


def calib_text(rng: np.random.Generator) -> bytes:
    rows = [f"{key}: " + " ".join(f"{v:.12e}" for v in rng.normal(0, 1, size=9 if key == "R0_rect" else 12))
            for key in CALIB_KEYS]
    return ("\n".join(rows) + "\n").encode()


def synthetic_files(seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                    size: tuple[int, int] = SYNTHETIC_SIZE) -> dict[str, bytes]:
    """The members of a synthetic data_road.zip in the official layout and colour encoding."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    files: dict[str, bytes] = {}
    for part, count in counts.items():
        for cat in CATEGORIES:
            for number in range(count):
                stem = f"{cat}_{number:06d}"
                image, label, lane = synthetic_scene(rng, cat, width, height)
                files[f"{ROOT}/{part}/image_2/{stem}.png"] = synthetic.encode(Image.fromarray(image), "PNG")
                files[f"{ROOT}/{part}/calib/{stem}.txt"] = calib_text(rng)
                if part != "training":
                    continue
                files[f"{ROOT}/{part}/gt_image_2/{cat}_road_{number:06d}.png"] = colour_png(label)
                if cat == "um":  # only the um category has ego-lane labels
                    files[f"{ROOT}/{part}/gt_image_2/{cat}_lane_{number:06d}.png"] = colour_png(lane)
    return files


def make_synthetic(downloads: Path, seed: int, counts: dict[str, int] = SYNTHETIC_COUNTS,
                   size: tuple[int, int] = SYNTHETIC_SIZE) -> list[Path]:
    return [synthetic.write_zip(Path(downloads) / ARCHIVE.filename, synthetic_files(seed, counts, size))]


DATASET = DatasetInfo(
    name="kitti_road",
    classes=CLASSES,
    palette=PALETTE,
    archives=(ARCHIVE,),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
    options=("val_fraction", "split_seed"),
)
