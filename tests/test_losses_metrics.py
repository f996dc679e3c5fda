"""The losses against their formulas and hand-computed cases (values, gradients, ignored pixels), and
the confusion-matrix scores on a hand-made case."""
from __future__ import annotations

import math

import pytest
import torch

from segmentnet.results.metrics import ConfusionMatrix
from segmentnet.training.losses import build_loss


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


def test_losses_by_name_and_unknown_name():
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    ce = build_loss("ce")(logits, target)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, target))
    for name in ("jaccard", "lovasz", "dice"):
        assert torch.allclose(build_loss(f"ce+{name}")(logits, target), ce + build_loss(name)(logits, target))
    with pytest.raises(KeyError, match="choices: ce, ce\\+dice, ce\\+jaccard, ce\\+lovasz, dice, focal, jaccard, lovasz"):
        build_loss("tversky")


def one_hot_logits(prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax is the one-hot prediction (to float precision)."""
    return torch.nn.functional.one_hot(prediction, num_classes).permute(0, 3, 1, 2).float() * 60


def test_lovasz_of_a_hard_prediction_is_one_minus_the_iou_of_the_present_classes():
    # 1 x 2 x 4 pixels, 3 classes; class 2 is predicted once but absent from the truth (not averaged)
    truth = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 1, 2, 2]]])   # its last pixel is ignored
    # pixels 0..6 (7 ignored): class 0: truth {0,1,4}, predicted {0,4} -> IoU 2/3; class 1: truth {2,3,5,6},
    # predicted {1,2,3,5} -> 3/5; class 2 is not in the truth
    loss = build_loss("lovasz")(one_hot_logits(prediction, 3), truth)
    assert math.isclose(float(loss), ((1 - 2 / 3) + (1 - 3 / 5)) / 2, abs_tol=1e-5)
    assert float(build_loss("lovasz")(one_hot_logits(torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 2]]]), 3), truth)) < 1e-5


def test_dice_of_a_hard_prediction_and_against_its_formula():
    truth = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 1, 2, 2]]])
    # class 0: 2I/(|P|+|T|) = 2*2/(2+3); class 1: 2*3/(4+4); class 2: 0/(1+0) -> 1 - mean(0.8, 0.75, 0)
    loss = build_loss("dice")(one_hot_logits(prediction, 3), truth)
    assert math.isclose(float(loss), 1 - (0.8 + 0.75 + 0) / 3, abs_tol=1e-5)
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(2, 4, 6, 7, generator=g), torch.randint(0, 4, (2, 6, 7), generator=g)
    probs = torch.softmax(logits.double(), 1)
    onehot = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).double()
    by_formula = 1 - (2 * (probs * onehot).sum((0, 2, 3)) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)))).mean()
    assert torch.allclose(build_loss("dice")(logits, target).double(), by_formula, atol=1e-6)


def test_focal_against_its_formula_and_cross_entropy_at_gamma_zero(monkeypatch):
    from segmentnet.training import losses

    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(2, 3, 5, 5, generator=g) * 2, torch.randint(0, 3, (2, 5, 5), generator=g)
    target[0, 0] = 255
    keep = target != 255
    pt = torch.softmax(logits.double(), 1).gather(1, target.clamp(max=2).unsqueeze(1)).squeeze(1)[keep]
    assert torch.allclose(build_loss("focal")(logits, target).double(), (-(1 - pt) ** 2 * pt.log()).mean(), atol=1e-6)
    weight = torch.tensor([1.0, 2.0, 0.5])
    monkeypatch.setattr(losses.FocalLoss, "gamma", 0.0)   # (1 - p_t)^0 = 1: cross-entropy, weights and ignore alike
    assert torch.allclose(build_loss("focal", weight=weight)(logits, target),
                          torch.nn.functional.cross_entropy(logits, target, weight=weight, ignore_index=255))


@pytest.mark.parametrize("name", ["jaccard", "lovasz", "dice", "focal", "ce+lovasz", "ce+dice"])
def test_losses_ignore_pixels_whatever_their_logits_give_gradients_and_descend(name):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[:, :, :3] = 255
    other = logits.clone()
    other[:, :, :, :3] = torch.randn(2, 4, 8, 3, generator=g) * 50
    loss = build_loss(name)
    assert torch.allclose(loss(logits, target), loss(other, target))       # ignored pixels count for nothing
    x = logits.clone().requires_grad_(True)
    value = loss(x, target)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :, :, 3:].abs().sum() > 0
    assert x.grad[:, :, :, :3].abs().sum() == 0                           # and get no gradient
    with torch.no_grad():
        assert loss(x - 5 * x.grad / x.grad.norm(), target) < value        # a step against it lowers it
    everything_ignored = logits.clone().requires_grad_(True)
    total = loss(everything_ignored, torch.full_like(target, 255))
    if torch.isfinite(total):   # (cross-entropy of no pixel is NaN, as torch defines it)
        total.backward()
        assert everything_ignored.grad is None or everything_ignored.grad.abs().sum() == 0


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
