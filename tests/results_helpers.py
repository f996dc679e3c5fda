"""Helpers for the Evaluate/Predict/Report tests: checkpoints in TrainSegmentNet's format without training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

TINY_OPTIONS = {"width": 8, "depth": 2, "blocks": 1}


class TwoConvNet(nn.Module):
    """Two convolutions with zero padding on both sides: mirror-symmetric if the kernels are;
    with kernel=1 a per-pixel colour classifier that sees no context."""

    def __init__(self, num_classes: int, width: int = 6, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(width, num_classes, kernel, padding=kernel // 2)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


def colour_classifier_checkpoint(path: Path, data_dir) -> Path:
    """A TwoConvNet(kernel=1) that labels each pixel with the class of the nearest mean colour.

    The mean colours come from the synthetic training images; nearest-mean is linear in the
    colour (argmin |x - m|^2 = argmax 2 m.x - |m|^2), so no training is needed. It segments
    the val images far better than chance but not perfectly: a non-trivial case for comparing
    scores. Register "two_conv" in segmentnet.models.MODELS before loading it.
    """
    from segmentnet.datasets.common import IMAGENET_MEAN, IMAGENET_STD

    train = Path(data_dir) / "voc2012" / "train"
    sums, counts = np.zeros((21, 3)), np.zeros(21)
    for image_path in sorted((train / "images").iterdir())[:12]:
        image = np.asarray(Image.open(image_path).convert("RGB")).reshape(-1, 3) / 255.0
        label = np.array(Image.open(train / "masks" / f"{image_path.stem}.png")).reshape(-1)
        keep = label != 255
        np.add.at(sums, label[keep], image[keep])
        counts += np.bincount(label[keep], minlength=21)
    means = (sums / np.maximum(counts, 1)[:, None] - IMAGENET_MEAN) / IMAGENET_STD  # in normalised units
    weight = torch.tensor(2 * means, dtype=torch.float32)
    bias = torch.tensor(np.where(counts > 0, -(means ** 2).sum(1), -1e4), dtype=torch.float32)
    model = TwoConvNet(21, width=6, kernel=1)
    with torch.no_grad():  # conv1 passes x through as (relu(x), relu(-x)); conv2 takes x = relu(x) - relu(-x)
        model.conv1.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)])[:, :, None, None])
        model.conv1.bias.zero_()
        model.conv2.weight.copy_(torch.cat([weight, -weight], dim=1)[:, :, None, None])
        model.conv2.bias.copy_(bias)
    return save_model_checkpoint(path, model, "two_conv", {"width": 6, "kernel": 1}, data_dir)


def save_model_checkpoint(path: Path, model: nn.Module, model_name: str, model_options: dict, data_dir) -> Path:
    """Write `model` as TrainSegmentNet would (the keys inference reads), for the synthetic VOC."""
    from segmentnet.core.checkpoint import save_checkpoint
    from segmentnet.datasets.common import IMAGENET_MEAN, IMAGENET_STD
    from segmentnet.datasets.voc2012 import CLASSES, PALETTE

    state = {"model": model.state_dict(), "model_name": model_name, "model_options": dict(model_options),
             "num_classes": len(CLASSES), "classes": list(CLASSES), "palette": [list(c) for c in PALETTE],
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "ignore_index": 255, "dataset": "voc2012",
             "config": {"data_dir": str(data_dir)}, "epoch": 1}
    save_checkpoint(state, path)
    return path


def tiny_segmentnet_checkpoint(path: Path, data_dir, seed: int = 0) -> Path:
    """An untrained tiny SegmentNet: its predictions are arbitrary but deterministic, with several classes."""
    from segmentnet.models import build_model

    torch.manual_seed(seed)
    model = build_model("segmentnet", 21, **TINY_OPTIONS)
    # Nudge the batch-norm statistics off their defaults so the outputs differ from pixel to pixel.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    return save_model_checkpoint(path, model, "segmentnet", TINY_OPTIONS, data_dir)


def read_png(path: Path) -> tuple[str, tuple[int, int], np.ndarray]:
    """(mode, (width, height), pixels) of a PNG, failing if the file is not a complete PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()
        return image.mode, image.size, np.array(image)
