"""TrainSegmentNet.py with one more model registered: SegmentNet with GroupNorm in place of BatchNorm.

test_distributed runs it under torchrun. Without batch norm a sample's gradient does not depend on
which other samples share its process, so 2 processes x batch 2 must give what 1 x batch 4 gives.
(SyncBatchNorm, the other way to get there, has no CPU implementation in torch.)
"""
from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.models import SegmentNet  # noqa: E402


def replace_batchnorm(module: nn.Module, groups: int = 2) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            replace_batchnorm(child, groups)
    return module


def segmentnet_groupnorm(num_classes: int, width: int = 8, depth: int = 2, blocks: int = 1) -> nn.Module:
    return replace_batchnorm(SegmentNet(num_classes, width=width, depth=depth, blocks=blocks))


if __name__ == "__main__":
    import TrainSegmentNet
    from segmentnet.core.cli import call_main
    from segmentnet.models import MODELS

    MODELS["segmentnet_gn"] = segmentnet_groupnorm
    sys.exit(call_main(TrainSegmentNet.main))
