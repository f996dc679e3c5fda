"""The models one by one (FCN's crops, ICNet's pooling, SegNet's and torchvision's parameter counts, the earlier
release's checkpoints), and every decoder over every encoder. What every registered model must do: test_registry.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from model_cases import NUM_CLASSES, check_forward_backward_step_and_state_dict, small_model

from segmentnet.core.errors import ConfigError
from segmentnet.models import ENCODERS, build_model
from segmentnet.models.compose import DECODERS, from_torchvision
from segmentnet.models.fcn import upsampling

# Every decoder over every encoder (at output stride 32 where the encoder cannot dilate, the one
# stride it fits), and the seeds' models over other encoders than their own.
PAIRS = [(decoder, {"encoder": encoder} | ({} if ENCODERS[encoder].dilatable or DECODERS[decoder].output_stride == 32
                                             else {"output_stride": 32}))
         for decoder in DECODERS for encoder in ENCODERS]
SEEDS = [("fcn8s", {"encoder": "vgg19", "fc_width": 32}), ("segnet", {}), ("icnet", {"encoder": "resnet101"}),
         ("deeplabv3", {"encoder": "resnet50", "output_stride": 16}), ("unet", {"encoder": "resnet34", "output_stride": 8})]
MATRIX = PAIRS + SEEDS  # (the registered models at their small options: test_registry.py)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", MATRIX, ids=[f"{n}-{o.get('encoder', '')}-{o.get('output_stride', '')}"
                                                      for n, o in MATRIX])
def test_every_decoder_over_every_encoder_runs_and_trains_at_odd_sizes(name, options):
    check_forward_backward_step_and_state_dict(name, options)


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


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_outputs_equal_torchvisions_segmentation_model_with_the_same_weights(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                             num_classes=NUM_CLASSES, aux_loss=True)
    ours = build_model(name, NUM_CLASSES)
    ours.load_state_dict(from_torchvision(theirs.state_dict()))
    image = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        expected, got = theirs.eval()(image), ours.eval()(image)
        assert torch.allclose(got, expected["out"], atol=1e-5, rtol=1e-4)
        torch.manual_seed(1)  # (dropout in training mode)
        expected = theirs.train()(image)
        torch.manual_seed(1)
        got = ours.train()(image)
    for key in ("out", "aux"):
        assert torch.allclose(got[key], expected[key], atol=1e-4, rtol=1e-4), key


def test_an_unfitting_pair_is_refused_naming_what_fits():
    with pytest.raises(ConfigError, match="resnet18.*resnet34.*mobilenet_v3_large.*output_stride 32"):
        build_model("deeplabv3", 3, encoder="vgg16")
    with pytest.raises(ConfigError, match="fits: vgg16, vgg19"):
        build_model("fcn8s", 3, encoder="resnet50")
    with pytest.raises(ConfigError, match="fits: vgg16_bn"):
        build_model("segnet", 3, encoder="resnet18")
    with pytest.raises(KeyError, match="convnext_tiny"):  # an unknown encoder lists the choices
        build_model("unet", 3, encoder="resnet19")
    with pytest.raises(ConfigError, match="squeezenet1_1 cannot .*output stride is 16.*or set output_stride 16"):
        build_model("fcn", 3, encoder="squeezenet1_1")  # (its default output stride: 8)
    assert build_model("fcn", 3, encoder="squeezenet1_1", output_stride=16).encoder.output_stride == 16


@pytest.mark.parametrize("encoder,tapped", [("resnet18", "layer3"), ("vgg16", 22), ("mobilenet_v3_large", 12)])
def test_the_auxiliary_head_taps_the_stage_before_the_deepest(encoder, tapped):
    """Not VGG's relu5_3 (its last stage is pool5 alone): the stage before the deepest one with convolutions."""
    model = build_model("unet", 3, encoder=encoder, aux=True)
    stage_end = model.encoder.ends[model.encoder.aux_stage]
    names = [name for name, _ in model.encoder.layers.named_children()]
    assert names[stage_end] == str(tapped)


@pytest.mark.parametrize("encoder", [e for e in ENCODERS if ENCODERS[e].dilatable])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_encoders_keep_their_deepest_map_at_the_output_stride(encoder, output_stride):
    from segmentnet.models.encoders import build_encoder
    body, _ = build_encoder(encoder, output_stride=output_stride)
    with torch.no_grad():
        features = body.eval()(torch.randn(1, 3, 64, 96))
    assert features[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert body.strides[-1] == output_stride


def test_segnet_parameter_count_matches_the_paper():
    with torch.device("meta"):
        model = build_model("segnet", 21)
    assert abs(sum(p.numel() for p in model.parameters()) - 29.46e6) / 29.46e6 < 0.01


def test_fcn_initialisation():
    model = build_model("fcn8s", 3, fc_width=16).decoder
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
    # With centre taps only every channel carries the same map, so one channel per layer computes the
    # same logits (the geometry, strides, paddings and crops, is all that is kept), at a fraction of the cost.
    for parent in list(model.modules()):
        for child_name, layer in list(parent.named_children()):
            if type(layer) is torch.nn.Conv2d:
                thin = torch.nn.Conv2d(min(layer.in_channels, 3 if layer.in_channels == 3 else 1), 1,
                                       layer.kernel_size, layer.stride, layer.padding, layer.dilation)
                with torch.no_grad():
                    thin.weight.zero_()
                    thin.bias.zero_()
                    k = thin.kernel_size[0]
                    thin.weight[:, :, k // 2, k // 2] = 1 / thin.in_channels
                    if child_name.startswith("score") and child_name != path:
                        thin.weight.zero_()
                setattr(parent, child_name, thin)
    with torch.no_grad():
        columns = model(images)[:, 0].sum(1)  # (image, column)
    centres = (columns * torch.arange(160.0)).sum(1) / columns.sum(1)
    errors = centres - torch.tensor([65.5 + s for s in shifts])
    assert abs(errors.mean().item()) < 0.25, errors


def test_icnet_label_guidance_weights_are_the_papers():
    model = small_model("icnet")
    assert model.aux_weights == {"sub24": 0.4, "sub4": 0.4}
    decoder = model.decoder.train()
    sub1, sub2, sub4 = decoder.features(model.encoder, torch.randn(2, 3, 64, 64))
    _, guidance = decoder((sub1, sub2, sub4))
    # the coarser the branch, the smaller its guidance logits: 1/16 and 1/8 of the input
    assert guidance["sub4"].shape[-2:] == (4, 4) and guidance["sub24"].shape[-2:] == (8, 8)


def test_unknown_option_lists_the_choices():
    with pytest.raises(KeyError, match="encoder_weights"):
        build_model("fcn8s", 21, depth=3)
    with pytest.raises(ConfigError, match="vgg19"):
        build_model("fcn8s", 21, encoder="resnet50")


# ----------------------------------------------------------------------------- the earlier release's checkpoints


def test_a_checkpoint_of_the_earlier_release_loads_and_predicts_as_before(tmp_path):
    """Release 9c71f37's fcn_resnet50 had torchvision's module names (backbone, classifier,
    aux_classifier) and the options width and pretrained_backbone: such a file loads in inference and
    gives torchvision's outputs for those weights."""
    from results_helpers import save_model_checkpoint

    from segmentnet.results.inference import load_model

    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                          aux_loss=True)
    path = save_model_checkpoint(tmp_path / "old.pt", theirs, "fcn_resnet50",
                                 {"width": 64, "aux": True, "pretrained_backbone": True}, tmp_path)
    model, _ = load_model(path)
    image = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        assert torch.allclose(model(image), theirs.eval()(image)["out"], atol=1e-5, rtol=1e-4)


def write_old_checkpoint(path, model_name: str, options: dict, weights: dict):
    """A checkpoint as the earlier release wrote it: its model_options and its state_dict keys."""
    from results_helpers import save_model_checkpoint

    save_model_checkpoint(path, torch.nn.Module(), model_name, options, path.parent)
    state = torch.load(path, weights_only=True)
    state["model"] = weights
    torch.save(state, path)
    return path


# model, its options now, the earlier release's options, our key prefix -> the earlier one
OLD_LAYOUTS = {
    "fcn8s": ({"fc_width": 16}, {"width": 64, "fc_width": 16, "backbone": "vgg16"},
              (("encoder.layers.", "backbone.features."), ("decoder.", ""))),
    "hypercolumn_squeezenet": ({"hidden": 8, "layers": [1, 4]},
                               {"width": 64, "hidden": 8, "layers": [1, 4], "pretrained_backbone": True},
                               (("encoder.layers.", "features."), ("decoder.classifier.", "classifier."))),
}


@pytest.mark.parametrize("name", sorted(OLD_LAYOUTS))
def test_the_earlier_releases_keys_map_onto_the_composition(name, tmp_path):
    from segmentnet.results.inference import load_model

    options, old_options, prefixes = OLD_LAYOUTS[name]
    model = build_model(name, 21, **options)
    old = {}
    for key, value in model.state_dict().items():
        for ours, theirs in prefixes:
            key = key.replace(ours, theirs, 1) if key.startswith(ours) else key
        old[key] = value
    assert not any(key.startswith(tuple(p for p, _ in prefixes)) for key in old)
    loaded, _ = load_model(write_old_checkpoint(tmp_path / "old.pt", name, old_options, old))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_hypercolumn_model_has_one_set_of_classifier_keys():
    model = build_model("hypercolumn_squeezenet", 21, hidden=8, layers=[1, 4])
    assert not any(key.startswith("classifier.") for key in model.state_dict())
    assert model.classifier is model.decoder.classifier


@pytest.mark.parametrize("model_name,options,keys,message", [
    ("unet", {"width": 64, "depth": 4}, {"inc.0.0.weight": torch.zeros(1)}, "classic U-Net .*git checkout 9c71f37"),
    ("icnet", {"width": 8}, {"backbone.conv1.weight": torch.zeros(1)}, "width 8 .*git checkout 9c71f37"),
])
def test_what_the_earlier_release_wrote_and_this_one_cannot_build_is_refused_saying_what_to_do(
        tmp_path, model_name, options, keys, message):
    from segmentnet.core.errors import DataError
    from segmentnet.results.inference import load_model

    with pytest.raises(DataError, match=message):
        load_model(write_old_checkpoint(tmp_path / "old.pt", model_name, options, keys))


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (1, 3, 7, 11), (1, 2, 1, 1), (1, 1, 13, 2), (1, 2, 12, 18)])
def test_icnets_pyramid_pooling_equals_adaptive_average_pooling(shape):
    """ICNet pools with slices (which an ONNX export keeps for any size): the windows of adaptive pooling."""
    from segmentnet.models.icnet import adaptive_avg_pool

    x = torch.randn(shape)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins), atol=1e-6, rtol=1e-6)


def test_model_options_named_by_anything_but_text_are_a_problem_not_a_crash():
    from segmentnet.models import model_option_problems

    # (a checkpoint's dict may hold any keys; build_model(**options) would raise a TypeError)
    assert model_option_problems("segmentnet", {1: 8, "width": 8}) == [
        "model_options of model 'segmentnet' must be named by text, got the key(s) 1"]
    assert model_option_problems("segmentnet", [("width", 8)])[0].startswith(
        "model_options of model 'segmentnet' must be a JSON object (dict) of options")
