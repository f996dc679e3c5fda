"""Losses by name: build_loss(name, ignore_index=255, weight=None) -> loss(logits, target).

`jaccard` is the soft Jaccard loss as pytorch-goodies defines it: softmax probabilities p and
one-hot targets t, per class I = sum(p*t) and U = sum(p+t) - I over batch and pixels, and
loss = 1 - mean over classes of I / (U + 1e-7); pixels labelled ignore_index take no part.
"""
from __future__ import annotations

from .errors import UnknownNameError

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7


class SoftJaccardLoss(nn.Module):
    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = F.softmax(logits.float(), dim=1)
        valid = (target != self.ignore_index).unsqueeze(1)           # N1HW
        safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
        one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float()
        probs, one_hot = probs * valid, one_hot * valid               # ignored pixels count for nothing
        intersection = (probs * one_hot).sum(dim=(0, 2, 3))
        union = (probs + one_hot).sum(dim=(0, 2, 3)) - intersection
        iou = intersection / (union + EPS)
        if self.weight is None:
            return 1 - iou.mean()
        return 1 - (iou * self.weight).sum() / self.weight.sum()


class CrossEntropy(nn.Module):
    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


class SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits, target):
        return sum(loss(logits, target) for loss in self.losses)


LOSSES = {
    "jaccard": lambda ignore_index, weight: SoftJaccardLoss(ignore_index, weight),
    "ce": lambda ignore_index, weight: CrossEntropy(ignore_index, weight),
    "ce+jaccard": lambda ignore_index, weight: SumOfLosses(CrossEntropy(ignore_index, weight),
                                                           SoftJaccardLoss(ignore_index, weight)),
}


def build_loss(name: str, ignore_index: int = 255, weight=None) -> nn.Module:
    try:
        return LOSSES[name](ignore_index, weight)
    except KeyError:
        raise UnknownNameError(f"unknown loss {name!r}; choices: {', '.join(sorted(LOSSES))}") from None
