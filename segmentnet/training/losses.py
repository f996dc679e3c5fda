"""Losses by name: build_loss(name, ignore_index=255, weight=None) -> loss(logits, target).

Pixels labelled ignore_index take part in none of them; `weight` (per class) weights each.
- `jaccard`: the soft Jaccard loss as pytorch-goodies defines it: softmax probabilities p and one-hot
  targets t, per class I = sum(p*t) and U = sum(p+t) - I over batch and pixels, and
  loss = 1 - mean over classes of I / (U + 1e-7).
- `lovasz`: Lovász-Softmax (Berman, Rannen Triki & Blaschko, CVPR 2018), the convex (Lovász) extension
  of 1 - Jaccard index per class, over the batch's pixels, averaged over the classes present in the
  target; on one-hot predictions it equals 1 - IoU exactly.
- `dice`: the soft Dice loss: 1 - mean over classes of 2 I / (sum p + sum t) (+ a small epsilon).
- `focal`: the focal loss (Lin et al., ICCV 2017): -(1 - p_t)^2 log p_t, the mean over the pixels;
  with `weight`, each pixel's term is weighted by its class (as cross-entropy's weight).
- `ce`, and the sums `ce+jaccard`, `ce+lovasz`, `ce+dice`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UnknownNameError

EPS = 1e-7


def probabilities_and_truth(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """(softmax probabilities, one-hot targets), both NCHW and zero at ignored pixels (which so count
    for nothing)."""
    probs = F.softmax(logits.float(), dim=1)
    valid = (target != ignore_index).unsqueeze(1)                 # N1HW
    safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2).float()
    return probs * valid, one_hot * valid


class ClassWeighted(nn.Module):
    """A loss over the pixels not labelled ignore_index, with an optional weight per class."""

    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))


class SoftJaccardLoss(ClassWeighted):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot = probabilities_and_truth(logits, target, self.ignore_index)
        intersection = (probs * one_hot).sum(dim=(0, 2, 3))
        union = (probs + one_hot).sum(dim=(0, 2, 3)) - intersection
        iou = intersection / (union + EPS)
        if self.weight is None:
            return 1 - iou.mean()
        return 1 - (iou * self.weight).sum() / self.weight.sum()


class CrossEntropy(ClassWeighted):
    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


class LovaszSoftmax(ClassWeighted):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = F.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        probs, labels = probs[valid], labels[valid]
        losses, weights = [], []
        for c in range(num_classes):
            fg = (labels == c).float()
            if fg.sum() == 0:  # ('present' classes only, as the authors average)
                continue
            errors = (fg - probs[:, c]).abs()
            order = torch.argsort(errors, descending=True)
            losses.append(torch.dot(errors[order], lovasz_grad(fg[order])))
            weights.append(1.0 if self.weight is None else self.weight[c])
        if not losses:
            return logits.sum() * 0.0  # (every pixel ignored: no loss, a gradient of zeros)
        weights = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
        return (torch.stack(losses) * weights).sum() / weights.sum()


def lovasz_grad(sorted_fg: torch.Tensor) -> torch.Tensor:
    """The Lovász extension's gradient of 1 - Jaccard at errors sorted in decreasing order
    (`sorted_fg`: 1 for the class's pixels, in that order)."""
    total = sorted_fg.sum()
    intersection = total - sorted_fg.cumsum(0)
    union = total + (1 - sorted_fg).cumsum(0)
    jaccard = 1 - intersection / union
    if len(jaccard) > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


class SoftDiceLoss(SoftJaccardLoss):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot = probabilities_and_truth(logits, target, self.ignore_index)
        intersection = (probs * one_hot).sum(dim=(0, 2, 3))
        dice = 2 * intersection / (probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3)) + EPS)
        if self.weight is None:
            return 1 - dice.mean()
        return 1 - (dice * self.weight).sum() / self.weight.sum()


class FocalLoss(CrossEntropy):
    gamma = 2.0  # the authors' choice: easy pixels (p_t near 1) count (1 - p_t)^2 as much

    def forward(self, logits, target):
        log_probs = F.log_softmax(logits.float(), dim=1)
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_pt = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        terms = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        weights = valid.float() if self.weight is None else self.weight[safe_target] * valid
        return (terms * weights).sum() / weights.sum().clamp_min(EPS)


class SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits, target):
        return sum(loss(logits, target) for loss in self.losses)


LOSSES = {
    "jaccard": lambda ignore_index, weight: SoftJaccardLoss(ignore_index, weight),
    "ce": lambda ignore_index, weight: CrossEntropy(ignore_index, weight),
    "lovasz": lambda ignore_index, weight: LovaszSoftmax(ignore_index, weight),
    "dice": lambda ignore_index, weight: SoftDiceLoss(ignore_index, weight),
    "focal": lambda ignore_index, weight: FocalLoss(ignore_index, weight),
    "ce+jaccard": lambda ignore_index, weight: SumOfLosses(CrossEntropy(ignore_index, weight),
                                                           SoftJaccardLoss(ignore_index, weight)),
    "ce+lovasz": lambda ignore_index, weight: SumOfLosses(CrossEntropy(ignore_index, weight),
                                                          LovaszSoftmax(ignore_index, weight)),
    "ce+dice": lambda ignore_index, weight: SumOfLosses(CrossEntropy(ignore_index, weight),
                                                        SoftDiceLoss(ignore_index, weight)),
}


def build_loss(name: str, ignore_index: int = 255, weight=None) -> nn.Module:
    try:
        return LOSSES[name](ignore_index, weight)
    except KeyError:
        raise UnknownNameError(f"unknown loss {name!r}; choices: {', '.join(sorted(LOSSES))}") from None
