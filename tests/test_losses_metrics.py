"""The soft Jaccard loss against its formula, and the confusion-matrix scores on a hand-made case."""
from __future__ import annotations

import math

import pytest
import torch

from segmentnet.losses import build_loss
from segmentnet.metrics import ConfusionMatrix


def jaccard_by_formula(logits, target, ignore=255):
    """Loop over classes, pixels kept only where the label is not ignore: 1 - mean_c I_c / (U_c + 1e-7)."""
    probs = torch.softmax(logits.double(), dim=1)
    keep = target != ignore
    ious = []
    for c in range(logits.shape[1]):
        p = probs[:, c][keep]
        t = (target[keep] == c).double()
        inter = (p * t).sum()
        union = (p + t).sum() - inter
        ious.append(inter / (union + 1e-7))
    return 1 - torch.stack(ious).mean()


@pytest.mark.parametrize("with_ignore", [False, True])
def test_jaccard_equals_formula(with_ignore):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 17, 23, generator=g) * 3
    target = torch.randint(0, 5, (3, 17, 23), generator=g)
    if with_ignore:
        target[torch.rand(3, 17, 23, generator=g) < 0.3] = 255
    loss = build_loss("jaccard")(logits, target)
    assert torch.allclose(loss.double(), jaccard_by_formula(logits, target), atol=1e-6)


def test_jaccard_ignores_pixels_whatever_their_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[:, :, :3] = 255
    other = logits.clone()
    other[:, :, :, :3] = torch.randn(2, 4, 8, 3, generator=g) * 50
    loss = build_loss("jaccard")
    assert torch.allclose(loss(logits, target), loss(other, target))


def test_losses_by_name_and_unknown_name():
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    ce = build_loss("ce")(logits, target)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, target))
    assert torch.allclose(build_loss("ce+jaccard")(logits, target), ce + build_loss("jaccard")(logits, target))
    with pytest.raises(KeyError, match="choices: ce, ce\\+jaccard, jaccard"):
        build_loss("focal")


def test_miou_hand_computed_with_ignored_pixels_and_an_absent_class():
    # 4 classes; class 3 is in neither truth nor prediction; 255 pixels are ignored.
    truth = torch.tensor([[0, 0, 1, 1, 2, 255],
                          [0, 0, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 3],
                         [0, 0, 2, 2, 2, 3]])
    cm = ConfusionMatrix(4)
    cm.update(truth, pred)
    s = cm.compute()
    # class 0: TP 3, FN 1, FP 0 -> 3/4; class 1: TP 2, FN 1, FP 1 -> 2/4; class 2: TP 3, FN 0, FP 1 -> 3/4
    assert s["per_class_iou"][:3] == pytest.approx([0.75, 0.5, 0.75])
    assert s["per_class_iou"][3] is None and s["absent_classes"] == [3]
    assert s["miou"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    assert s["pixel_acc"] == pytest.approx(8 / 10)
    assert s["mean_class_acc"] == pytest.approx((3 / 4 + 2 / 3 + 3 / 3) / 3)
    assert s["fw_iou"] == pytest.approx(0.4 * 0.75 + 0.3 * 0.5 + 0.3 * 0.75)
    assert sum(map(sum, s["confusion"])) == 10
    assert math.isclose(sum(s["confusion"][0]), 4)
