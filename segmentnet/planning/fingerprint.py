"""The dataset fingerprint: what the plan's rules need to know of a prepared dataset.

From dataset.json (classes, pixel counts, split sizes) and one pass over the training masks and
image headers: image sizes, the ignored share, and for each class how often it appears, how large
its regions are (the extent of a connected component, as a share of the image's shorter side) and
how thin (twice the largest distance from a region's inside to its border: a pole 6 pixels wide
measures about 6). Per-class figures are medians weighted by pixels: the size at which most of a
class's pixels lie, which a few specks do not move.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..core.errors import DataError
from ..core.files import open_regular
from ..datasets.common import IGNORE_INDEX
from ..training.data import SegmentationDataset

MAX_MASKS = 200          # a larger split is sampled evenly: the medians settle long before
MAX_SIDE = 256           # masks are measured at most this large (nearest-neighbour subsampling); sizes scaled back
MIN_COMPONENT = 1e-4     # regions below this share of an image are noise for the size statistics


def weighted_median(values: list[float], weights: list[float]) -> float | None:
    if not values:
        return None
    order = np.argsort(values)
    values, weights = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cumulative = np.cumsum(weights)
    return float(values[np.searchsorted(cumulative, cumulative[-1] / 2)])


def image_size(path) -> tuple[int, int]:
    try:
        with open_regular(path, "image") as f, Image.open(f) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc}); run DataSeparate.py again with --force") from None


def class_regions(labels: np.ndarray, cls: int, scale: float, short_side: int):
    """(extents as shares of the short side, widths in native pixels, areas) of one class's regions."""
    from scipy import ndimage

    components, count = ndimage.label(labels == cls)
    if count == 0:
        return [], [], []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(components), components, index)
    keep = areas >= MIN_COMPONENT * labels.size
    if not keep.any():
        return [], [], []
    # Half-widths: the largest distance to the region's border, inside each region.
    depth = ndimage.maximum(ndimage.distance_transform_edt(components > 0), components, index)
    boxes = ndimage.find_objects(components)
    extents = np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes], float)
    return ((extents[keep] * scale / short_side).tolist(), (2 * np.asarray(depth)[keep] * scale).tolist(),
            (areas[keep] * scale * scale).tolist())


def measure_dataset(root, info: dict, max_masks: int = MAX_MASKS) -> dict:
    """The fingerprint of the prepared dataset at root (dataset.json already read and checked as `info`)."""
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError:
        raise DataError("--auto measures the dataset's regions with scipy, which is not installed: "
                        "pip install scipy (it is in requirements.txt)") from None
    dataset = SegmentationDataset(root, "train", require_masks=True)
    num_classes = info["num_classes"]
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(max_masks, len(dataset))).round().astype(int))
    sizes, ignored, total = [], 0, 0
    extents = [[] for _ in range(num_classes)]
    widths = [[] for _ in range(num_classes)]
    areas = [[] for _ in range(num_classes)]
    present = [0] * num_classes
    for index in picks.tolist():
        sizes.append(image_size(dataset.images[index]))
        _, mask = dataset.load(index, decode=False)
        labels = np.asarray(mask)
        step = max(1, -(-max(labels.shape) // MAX_SIDE))  # ceil: the subsampling stride
        labels = labels[::step, ::step]
        ignored += int((labels == IGNORE_INDEX).sum()) * step * step
        total += labels.size * step * step
        short = min(labels.shape) * step
        for cls in np.unique(labels).tolist():
            if cls == IGNORE_INDEX:
                continue
            present[cls] += 1
            e, w, a = class_regions(labels, cls, step, short)
            extents[cls] += e
            widths[cls] += w
            areas[cls] += a
    counts = info["pixel_counts"].get("train") or [0] * num_classes
    pixels = sum(counts) or 1
    widths_wh = np.array(sizes, float)
    classes = []
    for cls, name in enumerate(info["classes"]):
        classes.append({
            "name": name,
            "pixel_share": counts[cls] / pixels,
            "image_share": present[cls] / len(picks),
            "extent": weighted_median(extents[cls], areas[cls]),
            "width_px": weighted_median(widths[cls], areas[cls]),
            "regions_per_image": len(extents[cls]) / max(present[cls], 1),
        })
    short_sides, long_sides = widths_wh.min(1), widths_wh.max(1)
    return {
        "dataset": info.get("name", str(root)),
        "train_images": len(dataset),
        "val_images": int(info.get("counts", {}).get("val", 0)),
        "masks_measured": len(picks),
        "num_classes": num_classes,
        "short_side": {"min": int(short_sides.min()), "median": float(np.median(short_sides)),
                       "max": int(short_sides.max())},
        "long_side": {"min": int(long_sides.min()), "median": float(np.median(long_sides)),
                      "max": int(long_sides.max())},
        "ignored_share": ignored / max(total, 1),
        "classes": classes,
    }
