"""The Dataset over the common layout, and a sampler that makes augmentation worker-independent."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .archive import DataError
from .transforms import decode_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.exists():
        raise DataError(f"{path} not found: run DataSeparate.py first (or point --data-dir at the right folder)")
    return json.loads(path.read_text())


class SegmentationDataset(Dataset):
    """Pairs root/split/images/<stem>.* with root/split/masks/<stem>.png.

    An index is either an int or (epoch, int), the form EpochSampler yields: augmentation draws
    from a generator seeded with (seed, epoch, index), so it is the same whichever worker runs it.
    """

    def __init__(self, root, split: str, transform=None, seed: int = 0, with_masks: bool = True):
        self.root, self.split, self.transform, self.seed = Path(root), split, transform, seed
        self.info = read_dataset_json(self.root)
        folder = self.root / split / "images"
        if not folder.is_dir():
            raise DataError(f"{folder} not found: split {split!r} is not in {self.root} "
                            f"(splits there: {', '.join(sorted(self.info.get('counts', {})))})")
        self.images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise DataError(f"{folder} holds no images: split {split!r} is empty")
        self.with_masks = with_masks and (self.root / split / "masks").is_dir()
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
            image = Image.open(path)
            if decode or image.mode != "RGB":
                image, _ = decode_rgb(image)
            mask = Image.open(self.mask_path(index)) if self.with_masks else None
            if mask is not None:
                mask.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"sample {index} of {self.root / self.split}: cannot read {path.name} or its mask ({exc})") from None
        return image, mask

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
