"""Where a training sample's time goes: our transforms against a torchvision-references-style pipeline.

    python bench/input_pipeline.py                         # VOC-sized JPEGs, crop 480, as in RESULTS.md
    python bench/input_pipeline.py --images 96 --passes 5  # longer, steadier

Runs in one process on one thread: the figures are images per second per DataLoader worker
(a worker is one process using one core). Both pipelines read the same generated JPEGs and
palette PNGs and draw the same distribution of augmentations:

reference  what torchvision's segmentation references do, written here with PIL/numpy/torch:
           resize the short side to a random integer in [scale_min*base_size, scale_max*base_size]
           (bilinear image, nearest mask), flip with p=0.5, pad right/bottom to the crop (image 0,
           mask 255), random crop, uint8 -> float in [0, 1], normalise; masks to int64.
ours       segmentnet's train_transform through SegmentationDataset (the real __getitem__): the
           same random factor, as a factor of the original size (for images whose short side is
           S this is the reference's range exactly: [scale_min*base_size/S, scale_max*base_size/S]),
           resampling only the region that survives the crop, uint8 out (normalised on the device).

Times are CPU time of this process (time.process_time), so images/s means images per CPU-second
of one core, also on a machine busy with other work. Only the first figure of each row (images/s)
matters for the target; the phase columns say where the time goes (ms per image; collate is per
image of a batch).
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.config import parse_config  # noqa: E402
from segmentnet.datasets import voc2012  # noqa: E402
from segmentnet.datasets.common import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, save_index_png  # noqa: E402
from segmentnet.preparation import synthetic  # noqa: E402
from segmentnet.training.data import SegmentationDataset, collate_pairs  # noqa: E402
from segmentnet.training.transforms import (RandomHorizontalFlip, RandomScaleCrop, ToTensor, decode_rgb,  # noqa: E402
                                            normalize, train_transform)


@dataclass
class Config:
    images: int = 48              # generated images (JPEG + palette PNG mask)
    width: int = 500              # their size: VOC's most common one
    height: int = 375             # (height of the generated images)
    quality: int = 90             # JPEG quality
    passes: int = 3               # times each pipeline goes over the images
    crop_size: int = 480          # training crop of both pipelines
    base_size: int = 520          # the reference resizes the short side to factor * base_size
    scale_min: float = 0.5        # random factor range (the torchvision references' 0.5-2.0 of 520)
    scale_max: float = 2.0        # (upper end of the factor range)
    batch_size: int = 8           # images per collated batch
    seed: int = 0                 # seeds the generated images and the augmentation
    data: str = ""                # folder for the generated set (default: a temporary folder)
    json_out: str = ""            # also write the figures as JSON to this file


# ----------------------------------------------------------------------------- data


def write_dataset(root: Path, cfg: Config, splits: dict[str, int] | None = None) -> Path:
    """A prepared dataset (common layout, dataset.json) of synthetic VOC-like scenes at the asked size.

    splits: images per split (default: cfg.images train images). bench/data_wait.py trains on it.
    """
    splits = splits or {"train": cfg.images}
    rng = np.random.default_rng(cfg.seed)
    pixel_counts = {}
    for split, count in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        totals = np.zeros(len(voc2012.CLASSES), dtype=np.int64)
        for i in range(count):
            image, label = synthetic.draw_scene(rng, cfg.height, cfg.width, voc2012.SYNTHETIC_STYLES,
                                                border_label=IGNORE_INDEX)
            Image.fromarray(image).save(root / split / "images" / f"{i:05d}.jpg", quality=cfg.quality)
            save_index_png(root / split / "masks" / f"{i:05d}.png", label, voc2012.PALETTE)
            totals += np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=len(totals))[:len(totals)]
        pixel_counts[split] = totals.tolist()
    info = {"name": "bench", "classes": list(voc2012.CLASSES), "num_classes": len(voc2012.CLASSES),
            "palette": [list(c) for c in voc2012.PALETTE], "ignore_index": IGNORE_INDEX,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "counts": dict(splits),
            "pixel_counts": pixel_counts}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


# ----------------------------------------------------------------------------- the reference pipeline


def reference_decode(image_path: Path, mask_path: Path):
    image = Image.open(image_path).convert("RGB")
    mask = Image.open(mask_path)
    mask.load()
    return image, mask


def reference_resize(image, mask, rng, cfg: Config):
    short = int(rng.integers(round(cfg.scale_min * cfg.base_size), round(cfg.scale_max * cfg.base_size) + 1))
    w, h = image.size
    size = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
    return image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)


def reference_flip(image, mask, rng):
    if rng.random() < 0.5:
        return image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    return image, mask


def pad_to(image: Image.Image, size: int, fill) -> Image.Image:
    w, h = image.size
    if w >= size and h >= size:
        return image
    canvas = Image.new(image.mode, (max(w, size), max(h, size)), fill)
    if image.mode == "P":
        canvas.putpalette(image.getpalette())
    canvas.paste(image, (0, 0))
    return canvas


def reference_crop(image, mask, rng, crop: int):
    image, mask = pad_to(image, crop, (0, 0, 0)), pad_to(mask, crop, IGNORE_INDEX)
    w, h = image.size
    left, top = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
    box = (left, top, left + crop, top + crop)
    return image.crop(box), mask.crop(box)


def reference_to_tensor(image, mask):
    """PILToTensor, ToDtype(float, scale=True), Normalize; the mask as int64."""
    image_t = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    return (image_t - mean) / std, torch.from_numpy(np.array(mask, dtype=np.int64))


# ----------------------------------------------------------------------------- timing


class Phases:
    """CPU seconds of this process per named phase.

    CPU time, not wall time: on a machine shared with other work a wall clock also counts the
    time the process waited for a core, while the CPU time is what one worker core spends.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.count = 0
        self._last = time.process_time()

    def start(self):
        self._last = time.process_time()

    def mark(self, name: str):
        now = time.process_time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def collate_when_full(batch: list, batch_size: int, phases: Phases) -> None:
    phases.count += 1
    if len(batch) == batch_size:
        collate_pairs(batch)
        batch.clear()
        phases.mark("collate")


def run_reference(dataset: SegmentationDataset, cfg: Config, rng, phases: Phases) -> None:
    batch = []
    for index in range(len(dataset)):
        phases.start()
        image, mask = reference_decode(dataset.images[index], dataset.mask_path(index))
        phases.mark("decode")
        image, mask = reference_resize(image, mask, rng, cfg)
        phases.mark("scale")
        image, mask = reference_flip(image, mask, rng)
        phases.mark("flip")
        image, mask = reference_crop(image, mask, rng, cfg.crop_size)
        phases.mark("crop")
        batch.append(reference_to_tensor(image, mask))
        phases.mark("to tensor+normalise")
        collate_when_full(batch, cfg.batch_size, phases)


def run_ours_phases(dataset: SegmentationDataset, cfg: Config, scale_range, epoch: int, phases: Phases) -> None:
    """Our pieces one by one, to see where the time goes (the image's pixels are decoded inside
    scale+crop, at reduced size when that is allowed; open+mask is its header and the mask)."""
    scale_crop, flip, to_tensor = RandomScaleCrop(cfg.crop_size, scale_range), RandomHorizontalFlip(), ToTensor()
    batch = []
    for index in range(len(dataset)):
        rng = np.random.default_rng([cfg.seed, epoch, index])
        phases.start()
        image, mask = dataset.load(index, decode=False)
        phases.mark("open+mask")
        image, mask = scale_crop(image, mask, rng)
        phases.mark("decode+scale+crop")
        image, mask = flip(image, mask, rng)
        phases.mark("flip")
        batch.append(to_tensor(image, mask))
        phases.mark("to tensor")
        collate_when_full(batch, cfg.batch_size, phases)


def run_ours(dataset: SegmentationDataset, cfg: Config, epoch: int, phases: Phases) -> None:
    """The real path: SegmentationDataset.__getitem__ with train_transform, then collate_pairs."""
    batch = []
    for index in range(len(dataset)):
        phases.start()
        batch.append(dataset[(epoch, index)])
        phases.mark("__getitem__")
        collate_when_full(batch, cfg.batch_size, phases)


def decode_only(dataset: SegmentationDataset, cfg: Config) -> float:
    """ms to decode one image fully (JPEG + mask), for scale: both pipelines pay about this."""
    started = time.process_time()
    for index in range(len(dataset)):
        decode_rgb(Image.open(dataset.images[index]))
        Image.open(dataset.mask_path(index)).load()
    return 1000 * (time.process_time() - started) / len(dataset)


def normalize_on_cpu_ms(cfg: Config) -> float:
    """What our normalise would cost per image if it ran in the worker instead of on the device."""
    images = torch.randint(0, 256, (cfg.batch_size, 3, cfg.crop_size, cfg.crop_size), dtype=torch.uint8)
    started = time.process_time()
    for _ in range(5):
        normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    return 1000 * (time.process_time() - started) / (5 * cfg.batch_size)


def row(name: str, phases: Phases) -> dict:
    total = sum(phases.seconds.values())
    return {"pipeline": name, "images_per_second": phases.count / total, "total_ms": 1000 * total / phases.count,
            "ms_per_image": {k: 1000 * v / phases.count for k, v in phases.seconds.items()}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    cfg = parse_config(Config, argv, description=__doc__)
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(cfg.data or tmp) / "bench", cfg)
        short = min(cfg.width, cfg.height)
        # Ours draws a factor of the original size; for these images the reference's short-side
        # range maps to exactly this factor range.
        scale_range = (cfg.scale_min * cfg.base_size / short, cfg.scale_max * cfg.base_size / short)
        dataset = SegmentationDataset(root, "train", train_transform(cfg.crop_size, scale_range), seed=cfg.seed)
        decode_only(dataset, cfg)  # warm the file cache
        reference, pieces, ours = Phases(), Phases(), Phases()
        reference_rng = np.random.default_rng(cfg.seed)
        for epoch in range(cfg.passes):  # interleaved, so that all three meet the same machine load
            run_reference(dataset, cfg, reference_rng, reference)
            run_ours_phases(dataset, cfg, scale_range, epoch, pieces)
            run_ours(dataset, cfg, epoch, ours)
        rows = [row("reference (torchvision-style, PIL)", reference), row("ours, pieces one by one", pieces),
                row("ours (SegmentationDataset.__getitem__)", ours)]
        full_decode = decode_only(dataset, cfg)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, Pillow {Image.__version__}, one thread; "
          f"images/s = images per CPU-second")
    print(f"{cfg.images} images {cfg.width}x{cfg.height} (JPEG q{cfg.quality}) x {cfg.passes} passes, crop "
          f"{cfg.crop_size}, short side {cfg.scale_min}-{cfg.scale_max} x {cfg.base_size} = factor "
          f"{scale_range[0]:.3f}-{scale_range[1]:.3f} of the original, batch {cfg.batch_size}")
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_image"].items())
        print(f"{r['pipeline']:42s} {r['images_per_second']:7.1f} images/s  ({r['total_ms']:.2f} ms: {parts})")
    speedup = rows[2]["images_per_second"] / rows[0]["images_per_second"]
    print(f"ours / reference: {speedup:.2f}x images/s per core")
    print(f"for scale: a full decode of image + mask takes {full_decode:.2f} ms; our normalise, done on the "
          f"device, would cost {normalize_on_cpu_ms(cfg):.2f} ms per image on this CPU")
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps({"config": vars(cfg), "rows": rows, "speedup": speedup}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
