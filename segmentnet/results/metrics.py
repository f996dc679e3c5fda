"""Confusion matrix (built with bincount) and the scores derived from it.

Rule for a class absent from both truth and prediction (union 0): its IoU is undefined, it is
left out of the mean, and it is listed under "absent_classes".
"""
from __future__ import annotations

import torch


class ConfusionMatrix:
    """Rows are true classes, columns predicted classes; pixels labelled ignore_index are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, prediction: torch.Tensor) -> None:
        keep = target != self.ignore_index
        t, p = target[keep].long(), prediction[keep].long()
        if t.numel() and int(t.max()) >= self.num_classes:
            raise ValueError(f"label {int(t.max())} is outside the {self.num_classes} classes")
        n = self.num_classes
        self.matrix += torch.bincount(t * n + p, minlength=n * n).view(n, n).to(self.matrix.device)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def compute(self) -> dict:
        return scores_from_confusion(self.matrix)


def scores_from_confusion(matrix: torch.Tensor) -> dict:
    m = matrix.double().cpu()
    true_per_class = m.sum(1)
    pred_per_class = m.sum(0)
    diag = m.diag()
    union = true_per_class + pred_per_class - diag
    present = union > 0
    iou = torch.where(present, diag / union.clamp(min=1), torch.full_like(diag, float("nan")))
    has_truth = true_per_class > 0
    class_acc = torch.where(has_truth, diag / true_per_class.clamp(min=1), torch.full_like(diag, float("nan")))
    total = m.sum()
    freq = true_per_class / total.clamp(min=1)
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(diag.sum() / total) if total > 0 else float("nan"),
        "mean_class_acc": float(class_acc[has_truth].mean()) if has_truth.any() else float("nan"),
        "fw_iou": float((freq[present] * iou[present]).sum()),
        "per_class_iou": [None if v != v else float(v) for v in iou.tolist()],
        "absent_classes": [i for i, p in enumerate(present.tolist()) if not p],
        "confusion": matrix.cpu().tolist(),
    }
