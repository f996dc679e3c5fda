"""Every registered model: logits at the input's size, gradients, auxiliary outputs, one epoch of training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_small_voc, tiny_train_config
from segmentnet.engine import compute_loss, train
from segmentnet.losses import LOSSES, build_loss
from segmentnet.models import MODELS, build_model
from segmentnet.models.fcn import upsampling

# Reduced widths so that every model runs in a moment on CPU; the defaults are the papers'.
SMALL_OPTIONS = {
    "segmentnet": {"width": 8, "depth": 2, "blocks": 1},
    "fcn32s": {"width": 8, "fc_width": 32},
    "fcn16s": {"width": 8, "fc_width": 32, "backbone": "vgg19"},
    "fcn8s": {"width": 8, "fc_width": 32},
    "unet": {"width": 8},
    "segnet": {"width": 8},
    "icnet": {"width": 8},
    "fcn_resnet50": {"width": 8},
    "fcn_resnet101": {"width": 8},
    "deeplabv3_resnet50": {"width": 8},
    "deeplabv3_resnet101": {"width": 8, "aux": False},
    "hypercolumn_vgg16": {"width": 8, "hidden": 16},
    "hypercolumn_squeezenet": {"width": 16, "hidden": 16},
}
NUM_CLASSES = 5


def small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, **SMALL_OPTIONS[name])


def test_every_model_has_small_test_options():
    assert set(SMALL_OPTIONS) == set(MODELS)


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_at_odd_size(name):
    model = small_model(name).train()
    images = torch.randn(2, 3, 45, 61)
    target = torch.randint(0, NUM_CLASSES, (2, 45, 61))
    target[:, :5] = 255  # an ignored border
    outputs = model(images)
    aux_weights = getattr(model, "aux_weights", {})
    if aux_weights:
        assert isinstance(outputs, dict) and set(outputs) == {"out", *aux_weights}
        assert all(w > 0 for w in aux_weights.values())
    main = outputs["out"] if isinstance(outputs, dict) else outputs
    assert main.shape == (2, NUM_CLASSES, 45, 61)

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

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 33, 41))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, NUM_CLASSES, 33, 41)


@pytest.mark.parametrize("size", [(1, 1), (32, 32), (31, 64), (45, 17)])
def test_fcn_logits_have_the_input_size_for_any_size(size):
    model = small_model("fcn8s").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape[-2:] == size


def test_fcn8s_has_about_134m_parameters():
    with torch.device("meta"):
        model = build_model("fcn8s", 21)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 134e6) / 134e6 < 0.01, count


# Published counts at default settings with 21 classes: torchvision's weights metadata (aux head
# included) and the SegNet paper's Table 6 (29.46M).
PUBLISHED_PARAMETERS = {"fcn_resnet50": 35_322_218, "fcn_resnet101": 54_314_346,
                        "deeplabv3_resnet50": 42_004_074, "deeplabv3_resnet101": 60_996_202}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_resnet_models_have_torchvisions_parameter_count(name):
    with torch.device("meta"):
        model = build_model(name, 21)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]


def test_resnet_models_use_torchvisions_module_names():
    with torch.device("meta"):
        keys = set(build_model("deeplabv3_resnet50", 21).state_dict()) | set(build_model("fcn_resnet50", 21).state_dict())
    for key in ("backbone.layer4.2.conv3.weight", "classifier.0.convs.4.1.weight", "classifier.0.project.0.weight",
                "classifier.1.weight", "classifier.4.weight", "aux_classifier.0.weight", "aux_classifier.4.bias"):
        assert key in keys, key


def test_segnet_parameter_count_matches_the_paper():
    with torch.device("meta"):
        model = build_model("segnet", 21)
    assert abs(sum(p.numel() for p in model.parameters()) - 29.46e6) / 29.46e6 < 0.01


def test_fcn_initialisation():
    model = build_model("fcn8s", 3, width=8, fc_width=16)
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        assert not layer.weight.any() and not layer.bias.any()
    # The upsampling interpolates bilinearly: a ramp stays a ramp (away from the borders).
    up = upsampling(3, 8)
    ramp = torch.arange(10.0).expand(1, 3, 6, 10).contiguous()
    upsampled = up(ramp)[0, :, 16:-16, 16:-16]
    assert torch.allclose(upsampled.diff(dim=-1), torch.full_like(upsampled.diff(dim=-1), 1 / 8), atol=1e-5)
    assert torch.allclose(upsampled.diff(dim=-2), torch.zeros_like(upsampled.diff(dim=-2)), atol=1e-5)
    assert torch.allclose(up(torch.ones(1, 3, 4, 4))[..., 8:-8, 8:-8], torch.ones(1))


@pytest.mark.parametrize("name,path", [("fcn32s", "score_fr"), ("fcn16s", "score_fr"), ("fcn16s", "score_pool4"),
                                       ("fcn8s", "score_fr"), ("fcn8s", "score_pool4"), ("fcn8s", "score_pool3")])
def test_fcn_crops_align_each_path_with_the_input(name, path):
    """A bright square moves the logits' centre of mass to where it sits in the input, through each path.

    Every convolution gets its centre tap set to 1 (all else 0), so the network is a chain of max-pools
    and bilinear upsamplings; only the score layer of `path` is kept. Averaged over the 16 positions of
    the square within a 32-pixel cell, the centre of mass lands on the square's centre exactly when the
    crop offsets are right (one pixel off in a skip crop moves it by 8 or 16 pixels, in the final crop by 1).
    """
    model = build_model(name, 1, width=1, fc_width=1).eval()
    shifts = range(0, 32, 2)
    images = torch.zeros(len(shifts), 3, 160, 160)
    for i, s in enumerate(shifts):
        images[i, :, 64 + s:68 + s, 64 + s:68 + s] = 1
    with torch.no_grad():
        for layer in model.modules():
            if type(layer) is torch.nn.Conv2d:
                layer.weight.zero_()
                layer.bias.zero_()
                k = layer.kernel_size[0]
                layer.weight[:, :, k // 2, k // 2] = 1
        for score in ("score_fr", "score_pool4", "score_pool3"):
            if score != path and hasattr(model, score):
                getattr(model, score).weight.zero_()
        columns = model(images)[:, 0].sum(1)  # (image, column)
    centres = (columns * torch.arange(160.0)).sum(1) / columns.sum(1)
    errors = centres - torch.tensor([65.5 + s for s in shifts])
    assert abs(errors.mean().item()) < 0.25, errors


def test_icnet_label_guidance_weights_are_the_papers():
    model = small_model("icnet")
    assert model.aux_weights == {"sub24": 0.4, "sub4": 0.4}
    outputs = model.train()(torch.randn(2, 3, 64, 64))
    # the coarser the branch, the smaller its guidance logits: 1/16 and 1/8 of the input
    assert outputs["sub4"].shape[-2:] == (4, 4) and outputs["sub24"].shape[-2:] == (8, 8)


def test_unknown_option_lists_the_choices():
    with pytest.raises(KeyError, match="pretrained_backbone"):
        build_model("fcn8s", 21, depth=3)
    with pytest.raises(KeyError, match="vgg19"):
        build_model("fcn8s", 21, backbone="resnet50")


@pytest.fixture(scope="module")
def smaller_voc(tmp_path_factory):
    """small_voc's synthetic VOC with 8 train / 2 val images: eleven trainings must fit the time budget."""
    return make_small_voc(tmp_path_factory.mktemp("smaller_voc"), counts={"train": 8, "val": 2, "unlabelled": 1})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_one_epoch(name, smaller_voc, tmp_path):
    cfg = tiny_train_config(smaller_voc, tmp_path / "run", model=name, model_options=SMALL_OPTIONS[name],
                            crop_size=32, batch_size=4, optimizer="sgd", loss="ce")
    summary = train(cfg)
    assert summary["epoch"] == 1 and summary["nonfinite_steps"] == 0
    assert 0 <= summary["final_scores"]["miou"] <= 1
    assert (tmp_path / "run" / "last.pt").exists()
