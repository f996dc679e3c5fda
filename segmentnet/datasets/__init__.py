"""Dataset registry: one module per dataset, each exporting DATASET (a DatasetInfo)."""
from __future__ import annotations

from ..core.errors import UnknownNameError
from . import ade20k, camvid, cityscapes, kitti_road, voc2012, voc2012_aug
from .common import IGNORE_INDEX, DatasetInfo, Pair

DATASETS: dict[str, DatasetInfo] = {
    module.DATASET.name: module.DATASET for module in (voc2012, voc2012_aug, cityscapes, ade20k, kitti_road, camvid)
}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}") from None


__all__ = ["DATASETS", "DatasetInfo", "IGNORE_INDEX", "Pair", "get_dataset"]
