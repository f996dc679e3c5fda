"""The Dataset over DataSeparate's layout and the paired image/mask transforms.

    from DatasetCreate import SegmentationDataset, train_transform
    ds = SegmentationDataset("data/voc2012", "train", train_transform(crop_size=384))
    image, mask = ds[0]      # uint8 3xHxW tensor, int64 HxW tensor (255 = ignore)

Importable from here: SegmentationDataset, EpochSampler, collate_pairs (segmentnet.training.data) and the paired
transforms Compose, RandomScaleCrop, RandomHorizontalFlip, ToTensor, train_transform, eval_transform,
normalize (segmentnet.training.transforms).

Run it to print the splits of a prepared dataset: python DatasetCreate.py --data-dir data --dataset voc2012
"""
import argparse
import sys

from segmentnet.training.data import EpochSampler, SegmentationDataset, collate_pairs
from segmentnet.training.transforms import (Compose, RandomHorizontalFlip, RandomScaleCrop, ToTensor, eval_transform,
                                            normalize, train_transform)

__all__ = ["Compose", "EpochSampler", "RandomHorizontalFlip", "RandomScaleCrop", "SegmentationDataset", "ToTensor",
           "collate_pairs", "eval_transform", "normalize", "train_transform"]


def main(argv=None) -> int:
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dataset", default="voc2012")
    args = p.parse_args(argv)
    root = Path(args.data_dir) / args.dataset
    for split in ("train", "val", "test"):
        if (root / split).is_dir():
            ds = SegmentationDataset(root, split)
            image, mask = ds[0]
            print(f"{split}: {len(ds)} images; first {tuple(image.shape)}, mask {'none' if mask is None else tuple(mask.shape)}")
    return 0


if __name__ == "__main__":
    from segmentnet.core.cli import call_main

    sys.exit(call_main(main))
