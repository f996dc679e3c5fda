"""Dataset registry: one module per dataset, each exporting DATASET (a DatasetInfo)."""
from __future__ import annotations

from .common import IGNORE_INDEX, DatasetInfo, Pair
from . import voc2012

DATASETS: dict[str, DatasetInfo] = {
    voc2012.DATASET.name: voc2012.DATASET,
}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}") from None


__all__ = ["DATASETS", "DatasetInfo", "IGNORE_INDEX", "Pair", "get_dataset"]
