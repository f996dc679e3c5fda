"""Every registered model at small settings, and the checks that every model, and every decoder over
every encoder, must pass: shared by the registry's tester (test_registry.py) and test_models.py."""
from __future__ import annotations

from copy import deepcopy

import torch

from segmentnet.models import build_model
from segmentnet.training.loops import compute_loss
from segmentnet.training.losses import LOSSES, build_loss

# Every registered model at small settings (torchvision's encoders have their own widths; small
# inputs keep them quick).
SMALL_OPTIONS = {
    "segmentnet": {"width": 8, "depth": 2, "blocks": 1},
    "unet": {"encoder": "resnet18"},
    "fpn": {"encoder": "resnet18"},
    "deeplabv3": {"encoder": "resnet18", "aux": True},
    "deeplabv3plus": {"encoder": "mobilenet_v3_large"},
    "fcn": {"encoder": "resnet18"},
    "fcn32s": {"width": 8, "fc_width": 32},
    "fcn16s": {"width": 8, "fc_width": 32, "encoder": "vgg19"},
    "fcn8s": {"width": 8, "fc_width": 32},
    "segnet": {"width": 8},
    "icnet": {},
    "fcn_resnet50": {},
    "fcn_resnet101": {},
    "deeplabv3_resnet50": {},
    "deeplabv3_resnet101": {"aux": False},
    "hypercolumn_vgg16": {"width": 8, "hidden": 16},
    "hypercolumn_squeezenet": {"hidden": 16},
}
NUM_CLASSES = 5


def small_model(name: str, options=None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, **(SMALL_OPTIONS[name] if options is None else options))


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_forward_backward_step_and_state_dict(name: str, options: dict) -> None:
    """Logits at odd input sizes, a gradient for every trainable weight (the auxiliary heads' own too),
    every loss finite, one optimiser step that moves the weights, and a state_dict that holds all that
    shapes the output."""
    model = small_model(name, options).train()
    images = torch.randn(2, 3, 35, 47)
    target = torch.randint(0, NUM_CLASSES, (2, 35, 47))
    target[:, :5] = 255  # an ignored border
    outputs = model(images)
    aux_weights = getattr(model, "aux_weights", {})
    if aux_weights:
        assert isinstance(outputs, dict) and set(outputs) == {"out", *aux_weights}
        assert all(w > 0 for w in aux_weights.values())
    main = outputs["out"] if isinstance(outputs, dict) else outputs
    assert main.shape == (2, NUM_CLASSES, 35, 47)

    criterion = build_loss("ce")
    total = compute_loss(outputs, target, criterion, aux_weights)
    full_grads = grads_of(model, total)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(full_grads) == trainable, f"no gradient for {sorted(trainable - set(full_grads))[:5]}"
    assert all(torch.isfinite(g).all() for g in full_grads.values())
    if aux_weights:  # the auxiliary losses add to the loss and reach weights the main output does not use
        main_loss = criterion(main, target)
        assert total.item() > main_loss.item()
        main_grads = grads_of(model, main_loss)
        aux_only = [n for n, g in full_grads.items()
                    if g.abs().sum() > 0 and (n not in main_grads or main_grads[n].abs().sum() == 0)]
        assert aux_only, "the auxiliary outputs do not reach any weight of their own"
    for loss_name in LOSSES:  # trainable with every loss
        assert torch.isfinite(compute_loss(outputs, target, build_loss(loss_name), aux_weights))

    # one training step (with the full loss's gradients) moves the weights and keeps them finite
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        p.grad = full_grads.get(n)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01).step()
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved and all(torch.isfinite(p).all() for p in model.parameters())

    model.eval()
    image = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        logits = model(image)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, NUM_CLASSES, 33, 41)
    # the state_dict round trip: a copy whose every weight and buffer is redrawn gives the same logits
    # once the state_dict is loaded (nothing that shapes the output is left out of it)
    copy = deepcopy(model)
    with torch.no_grad():
        for tensor in [*copy.parameters(), *copy.buffers()]:
            tensor.copy_(torch.rand_like(tensor.float()).to(tensor.dtype) if tensor.is_floating_point()
                         else tensor + 1)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():  # (a deep random net in eval mode after one step may overflow: NaN equals NaN here)
        torch.testing.assert_close(copy.eval()(image), logits, rtol=0, atol=0, equal_nan=True)
