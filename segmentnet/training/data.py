"""The Dataset over the common layout, a sampler that makes augmentation worker-independent, and the
training's loaders."""
from __future__ import annotations

import glob
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.config import INT64_MAX, entry_problems, is_colours, is_whole
from ..core.description import RULES as DESCRIPTION_RULES
from ..core.errors import ConfigError, DataError
from ..core.files import is_regular, open_regular, read_json
from ..datasets.common import IGNORE_INDEX
from .transforms import decode_rgb, eval_transform, train_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def dataset_json_problems(info, complete: bool = True) -> list[str]:
    """What is wrong with the contents of a dataset.json (empty: nothing). complete=False: only the
    entries it has are checked (those of the number of classes only when it has that)."""
    if not isinstance(info, dict):
        return [f"it holds a {type(info).__name__}, not a JSON object"]
    n = info.get("num_classes")
    if (complete or "num_classes" in info) and not is_whole(n, 1, IGNORE_INDEX):
        return [f"num_classes must be a whole number from 1 to {IGNORE_INDEX}, got {n!r}"]
    rules = {
        "name": (lambda v: isinstance(v, str) and v != "", "the dataset's name (text)"),
        "ignore_index": (lambda v: is_whole(v, IGNORE_INDEX, IGNORE_INDEX), str(IGNORE_INDEX)),
        "mean": DESCRIPTION_RULES["mean"],  # (they reach float32 tensors: the ranges a checkpoint's must have)
        "std": DESCRIPTION_RULES["std"],
        "counts": (lambda v: isinstance(v, dict) and all(is_whole(c, 0, INT64_MAX) for c in v.values()),
                   "a JSON object of image counts per split"),
    }
    if n is not None:
        rules |= {
            "classes": (lambda v: isinstance(v, list) and len(v) == n and all(isinstance(c, str) for c in v),
                        f"a list of {n} class names"),
            "palette": (lambda v: is_colours(v, n), f"a list of at least {n} [r, g, b] colours (0 to 255)"),
            "pixel_counts": (lambda v: isinstance(v, dict) and all(
                isinstance(c, list) and len(c) == n and all(is_whole(x, 0, INT64_MAX) for x in c) for c in v.values()),
                             f"a JSON object of {n} pixel counts per split"),
        }
    return entry_problems(info, rules, optional=() if complete else set(rules))


def read_dataset_json(root: Path, complete: bool = True) -> dict:
    """The dataset.json DataSeparate.py wrote, checked: a file damaged or edited by hand stops here, not
    deep inside the training. complete=False: entries may be missing (those present are checked)."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run DataSeparate.py first (or point --data-dir at the right folder)")
    try:
        info = read_json(path, "the dataset description")
    except ValueError as exc:  # not JSON, not UTF-8, or beyond jsonfile's limits
        problems = [f"it is not valid JSON ({exc})"]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    else:
        problems = dataset_json_problems(info, complete)
    if problems:
        raise DataError(f"{path} is damaged: {'; '.join(problems)}. Run DataSeparate.py again with --force to "
                        f"write it anew")
    return info


def image_paths(inputs: list[str], what: str = "input") -> list[Path]:
    """Image files, folders (their image files) and glob patterns -> image paths, sorted per input, each
    once; DataError for an input that matches nothing or cannot be read, and for two images of one name
    (their outputs, named by it, would overwrite each other)."""
    paths: list[Path] = []
    for text in map(str, inputs):
        path = Path(text)
        try:
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            elif path.is_file():
                found = [path]
            else:
                found = sorted(Path(p) for p in glob.glob(text)
                               if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
        except OSError as exc:
            raise DataError(f"{what} {text!r} cannot be read: {exc.strerror or exc} ({exc.filename or text}); check "
                            f"the permissions of that folder, or leave it out") from None
        if not found:
            raise DataError(f"{what} {text!r} is no image file, no folder holding images and no glob matching "
                            f"any (image suffixes: {', '.join(IMAGE_SUFFIXES)})")
        paths += found
    unique = list(dict.fromkeys(paths))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise DataError(f"{stems[path.stem]} and {path} have the same name {path.stem!r}: their outputs "
                            f"would overwrite each other; predict them into separate --out folders")
        stems[path.stem] = path
    return unique


@dataclass(frozen=True)
class DatasetFacts:
    """What a model trained on a dataset keeps of its dataset.json: the classes it predicts, their
    colours, and the normalisation its inputs get."""
    num_classes: int
    classes: list
    palette: list
    mean: list
    std: list

    @classmethod
    def from_info(cls, info: dict) -> "DatasetFacts":
        """From read_dataset_json's checked dict."""
        return cls(info["num_classes"], info["classes"], info["palette"], info["mean"], info["std"])


class SegmentationDataset(Dataset):
    """Pairs root/split/images/<stem>.* with root/split/masks/<stem>.png.

    An index is either an int or (epoch, int), the form EpochSampler yields: augmentation draws
    from a generator seeded with (seed, epoch, index), so it is the same whichever worker runs it.
    """

    def __init__(self, root, split: str, transform=None, seed: int = 0, with_masks: bool = True,
                 require_masks: bool = False):
        self.root, self.split, self.transform, self.seed = Path(root), split, transform, seed
        self.info = read_dataset_json(self.root, complete=False)  # (a training has read it whole already)
        folder = self.root / split / "images"
        if not folder.is_dir():
            raise DataError(f"{folder} not found: split {split!r} is not in {self.root} "
                            f"(splits there: {', '.join(sorted(self.info.get('counts', {})))})")
        self.images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise DataError(f"{folder} holds no images: split {split!r} is empty")
        self.with_masks = with_masks and (self.root / split / "masks").is_dir()
        if require_masks and not self.with_masks:
            raise DataError(f"{self.root / split / 'masks'} not found: the prepared split {split!r} has images but no "
                            f"masks, and training needs them. Run DataSeparate.py again with --force (it writes "
                            f"images/ and masks/ for every labelled split)")
        self.num_classes = self.info.get("num_classes", IGNORE_INDEX)  # unknown: every label but 255 passes
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def mask_path(self, index: int) -> Path:
        return self.root / self.split / "masks" / f"{self.images[index].stem}.png"

    def load(self, index: int, decode: bool = True):
        """The untransformed pair as PIL images (mask in mode 'P' or 'L': class indices).

        decode=False leaves an RGB image opened but not decoded (only its header is read), so that
        the transform can decode a JPEG at reduced size when it will shrink it anyway.
        """
        path = self.images[index]
        try:
            for file in (path, self.mask_path(index)) if self.with_masks else (path,):
                if not is_regular(file):  # a fifo would hang the loader, a device feed it without end
                    raise OSError(f"{file.name} is not a regular file (a fifo, a device, a folder, or missing)")
            image = Image.open(path)
            if decode or image.mode != "RGB":
                image, _ = decode_rgb(image)
            mask = Image.open(self.mask_path(index)) if self.with_masks else None
            if mask is not None:
                mask.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"sample {index} of {self.root / self.split}: cannot read {path.name} or its mask ({exc})") from None
        if mask is not None:
            self.check_labels(mask, index)
        return image, mask

    def check_labels(self, mask: Image.Image, index: int) -> None:
        """Class indices below num_classes, or IGNORE_INDEX: a larger one would crash the loss (or, on a
        GPU, end the process with a device-side assert) far from its cause."""
        where = f"sample {index} of {self.root / self.split}: mask {self.mask_path(index).name}"
        if mask.mode not in ("P", "L"):
            raise DataError(f"{where} has mode {mask.mode}, but masks of class indices (mode P or L) are expected; "
                            f"run DataSeparate.py again with --force")
        labels = np.asarray(mask)
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
        if bad.any():
            values = sorted(set(np.unique(labels[bad]).tolist()))
            raise DataError(f"{where} holds label values {values[:10]}, outside the {self.num_classes} classes of "
                            f"dataset.json (0..{self.num_classes - 1}, or {IGNORE_INDEX} for 'ignore'): the prepared "
                            f"dataset is damaged or mixed with another one. Run DataSeparate.py again with --force")

    def __getitem__(self, index):
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        if self.transform is None:
            return self.load(index)
        image, mask = self.load(index, decode=False)
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            return self.transform(image, mask, rng)
        except (OSError, SyntaxError) as exc:  # the image is decoded inside the transform
            raise DataError(f"sample {index} of {self.root / self.split}: cannot decode "
                            f"{self.images[index].name} ({exc})") from None


class EpochSampler(Sampler):
    """Yields (epoch, index): a seeded shuffle per epoch, sharded over ranks, resumable mid-epoch.

    Every rank draws the same permutation from (seed, epoch) and takes every world_size-th item,
    padding with the first items so all ranks get the same count (as DistributedSampler does), or
    (pad=False, for validation) giving each sample to exactly one rank.
    `start` skips the first samples of this rank's share, to resume inside an epoch.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, pad: bool = True):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size, self.drop_last, self.pad = rank, world_size, drop_last, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if not self.pad and not self.drop_last:  # validation: each sample exactly once overall
            return order[self.rank::self.world_size]
        if self.drop_last:
            per_rank = self.length // self.world_size
        else:
            per_rank = math.ceil(self.length / self.world_size)
            order += order[: per_rank * self.world_size - len(order)]
        return order[self.rank: per_rank * self.world_size: self.world_size]

    def __iter__(self):
        for index in self.indices()[self.start:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return len(self.indices()) - self.start


def collate_pairs(batch):
    """Stack equal-sized pairs; masks may be None (unlabelled images)."""
    images = torch.stack([b[0] for b in batch])
    masks = None if batch[0][1] is None else torch.stack([b[1] for b in batch])
    return images, masks


# ----------------------------------------------------------------------------- the training's loaders


def check_crop_fits(dataset: SegmentationDataset, cfg) -> None:
    """With padding off, every image scaled by scale_min must still hold a crop."""
    if cfg.pad:
        return
    for path in dataset.images:
        with open_regular(path, "image") as f, Image.open(f) as im:
            w, h = im.size
        if min(w, h) * cfg.scale_min < cfg.crop_size:
            raise ConfigError(f"crop_size {cfg.crop_size} is larger than {path} ({w}x{h}) scaled by scale_min "
                              f"{cfg.scale_min}, and pad is off: lower crop_size, raise scale_min or set pad true")


def ignore_ctrl_c(worker_id: int) -> None:
    """Loader worker init: Ctrl-C in a terminal reaches every process of the group, and a worker that
    died of it would break the main process's orderly stop. (SIGTERM stays: it is how the loader and
    multiprocessing end their workers.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_workers(requested: int) -> int:
    """-1: the CPU cores this process may use, shared with the other training processes of the node
    (torchrun's LOCAL_WORLD_SIZE), at most 8 (more rarely helps, and each holds prefetched batches)."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def build_loaders(cfg, env, root: Path):
    """(train loader, val loader, train sampler) of the dataset at root, for the processes of `env`."""
    train_set = SegmentationDataset(root, "train", train_transform(cfg.crop_size, (cfg.scale_min, cfg.scale_max),
                                                                   cfg.flip, cfg.pad, cfg.colour_jitter), seed=cfg.seed,
                                    require_masks=True)
    workers = loader_workers(cfg.workers)
    val_loader = validation_loader(root, env, cfg.seed, workers)
    check_crop_fits(train_set, cfg)
    train_sampler = EpochSampler(len(train_set), cfg.seed, shuffle=True, rank=env.rank, world_size=env.world_size,
                                 drop_last=True)
    if len(train_sampler) < cfg.batch_size:
        raise ConfigError(f"the train split has {len(train_set)} images, fewer than one batch of {cfg.batch_size} "
                          f"per process: lower batch_size")
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=train_sampler, drop_last=True,
                              **loader_options(env, workers))
    return train_loader, val_loader, train_sampler


def loader_options(env, workers: int) -> dict:
    options = dict(num_workers=workers, pin_memory=env.device.type == "cuda", collate_fn=collate_pairs,
                   persistent_workers=workers > 0)
    if workers > 0:
        options["prefetch_factor"] = 4
        options["worker_init_fn"] = ignore_ctrl_c
    return options


def validation_loader(root: Path, env, seed: int, workers: int) -> DataLoader:
    """Whole val images one at a time, each to exactly one process of `env`."""
    val_set = SegmentationDataset(root, "val", eval_transform(), seed=seed, require_masks=True)
    sampler = EpochSampler(len(val_set), shuffle=False, rank=env.rank, world_size=env.world_size, pad=False)
    return DataLoader(val_set, batch_size=1, sampler=sampler, **loader_options(env, workers))
