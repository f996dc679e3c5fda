"""Pretrained weights by torchvision's names or from files: every tensor in its place, clear errors for bad files.

The files are made here from torchvision's own (randomly initialised) models, so they have exactly the
key layout of its published files; nothing is downloaded.
"""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from segmentnet.core.errors import DataError
from segmentnet.models import build_model


def write_torchvision_file(path, arch: str, **kwargs) -> dict:
    torch.manual_seed(7)
    state = torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# model, its options, the encoder's torchvision model, file prefix -> the model's prefix
CASES = {
    "unet-resnet34": ("unet", {"encoder": "resnet34"}, "resnet34", {"conv1.": "encoder.layers.conv1.",
                                                                    "bn1.": "encoder.layers.bn1.",
                                                                    "layer": "encoder.layers.layer"}),
    "fcn32s-vgg19": ("fcn32s", {"encoder": "vgg19"}, "vgg19", {"features.": "encoder.layers.",
                                                               "classifier.0.": "decoder.fc6.",
                                                               "classifier.3.": "decoder.fc7."}),
    "segnet": ("segnet", {}, "vgg16_bn", {"features.": "encoder.layers."}),
    "fpn-efficientnet_b0": ("fpn", {"encoder": "efficientnet_b0"}, "efficientnet_b0",
                            {"features.": "encoder.layers."}),
    "hypercolumn_squeezenet": ("hypercolumn_squeezenet", {"layers": [1, 4, 7, 12]}, "squeezenet1_1",
                               {"features.": "encoder.layers."}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_encoder_tensor_lands_in_its_place(case, tmp_path):
    name, options, arch, prefixes = CASES[case]
    path = tmp_path / f"{arch}.pth"
    state = write_torchvision_file(path, arch)
    model = build_model(name, 3, encoder_weights=str(path), **options)
    ours = model.state_dict()
    placed = 0
    for key, tensor in state.items():
        matches = [(f, m) for f, m in prefixes.items() if key.startswith(f)]
        if not matches or key.endswith("num_batches_tracked"):  # ImageNet's classifier (FCN: fc8); BN's counter
            continue
        (file_prefix, model_prefix), = matches
        target = ours[model_prefix + key[len(file_prefix):]]
        assert torch.equal(target, tensor.reshape(target.shape)), key
        placed += 1
    # and every tensor of the model's encoder (and FCN's fc6/fc7) came from the file
    assert placed == len([k for k in ours if k.startswith(tuple(prefixes.values()))
                          and not k.endswith("num_batches_tracked")])
    if name == "fcn32s":  # fc6 as a 7x7 convolution over pool5's (512, 7, 7)
        fc6 = state["classifier.0.weight"]
        assert model.decoder.fc6.weight.shape == (4096, 512, 7, 7)
        assert model.decoder.fc6.weight[5, 3, 2, 4] == fc6[5, 3 * 49 + 2 * 7 + 4]


def test_file_of_another_encoder_is_refused_naming_the_keys(tmp_path):
    write_torchvision_file(tmp_path / "resnet18.pth", "resnet18")
    with pytest.raises(DataError, match=r"does not fit the resnet34 encoder: .*keys missing \(layer1.2"):
        build_model("unet", 3, encoder="resnet34", encoder_weights=str(tmp_path / "resnet18.pth"))


def test_file_of_other_shapes_is_refused_naming_them(tmp_path):
    state = write_torchvision_file(tmp_path / "resnet18.pth", "resnet18")
    state["bn1.bias"] = torch.zeros(16)
    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(DataError, match=r"shapes differ, file vs model \(bn1.bias \(16,\) vs \(64,\)"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "resnet18.pth"))


def test_truncated_missing_and_non_state_dict_files_give_clear_errors(tmp_path):
    path = tmp_path / "resnet18.pth"
    write_torchvision_file(path, "resnet18")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"resnet18.pth is truncated or corrupt.*resnet18-f37072fd\.pth"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(path))
    with pytest.raises(DataError, match="not found.*IMAGENET1K_V1"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "nothing.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(DataError, match="is not a state_dict"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "list.pth"))


def test_a_file_with_nan_weights_is_refused_naming_them(tmp_path):
    state = write_torchvision_file(tmp_path / "resnet18.pth", "resnet18")
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(DataError, match=r"NaN or infinite values in 1 tensor\(s\) .*\(layer2.0.conv1.weight\)"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "resnet18.pth"))


def test_an_unknown_weights_name_lists_torchvisions_names():
    with pytest.raises(DataError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        build_model("unet", 3, encoder="resnet50", encoder_weights="IMAGENET")


class NotATensor:
    pass


def test_file_with_code_is_refused(tmp_path):
    torch.save({"conv1.weight": NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(DataError, match="refused"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "pickle.pth"))


@pytest.fixture
def hub_without_network(tmp_path, monkeypatch):
    """torch.hub's cache in tmp_path, and a download that fails as it does offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints", calls


def test_a_name_offline_names_the_file_and_the_cache_folder(hub_without_network):
    cache, calls = hub_without_network
    with pytest.raises(DataError) as caught:
        build_model("unet", 3, encoder="resnet18", encoder_weights="IMAGENET1K_V1")
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and str(cache) in message and "name resolution" in message
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_a_name_uses_the_file_in_torch_hubs_cache_without_network(hub_without_network):
    cache, calls = hub_without_network
    state = write_torchvision_file(cache / "resnet18-f37072fd.pth", "resnet18")
    model = build_model("fpn", 3, encoder="resnet18", encoder_weights="DEFAULT")
    assert calls == []
    assert torch.equal(model.encoder.layers.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_damaged_download_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def bad_hash(url, dst, hash_prefix=None, progress=True):
        assert hash_prefix == "f37072fd"  # the hash in the file name is checked
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(DataError, match="download of resnet18-f37072fd.pth .* is damaged"):
        build_model("unet", 3, encoder="resnet18", encoder_weights="IMAGENET1K_V1")


def test_rebuilding_from_a_checkpoint_skips_the_weights_file(tmp_path):
    model = build_model("segnet", 3, pretrained=False, encoder_weights=str(tmp_path / "gone.pth"))
    assert model is not None


def test_torchvisions_segmentation_weights_fine_tune_with_a_new_head(tmp_path, capsys):
    """fcn_resnet50's weights of 21 classes into a model of 5: all but the two classifying convolutions
    load, those stay newly initialised and the log says so."""
    torch.manual_seed(3)
    theirs = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                          aux_loss=True)
    torch.save(theirs.state_dict(), tmp_path / "fcn.pth")
    model = build_model("fcn_resnet50", 5, weights=str(tmp_path / "fcn.pth"))
    assert "aux_heads.aux.4, head newly initialised" in capsys.readouterr().out
    assert torch.equal(model.encoder.layers.layer4[2].conv3.weight, theirs.backbone.layer4[2].conv3.weight)
    assert torch.equal(model.decoder.layers[0].weight, theirs.classifier[0].weight)
    assert torch.equal(model.aux_heads["aux"][0].weight, theirs.aux_classifier[0].weight)
    assert model.head.weight.shape == (5, 512, 1, 1)
    same = build_model("fcn_resnet50", 21, weights=str(tmp_path / "fcn.pth"))  # the same classes: all of it
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.allclose(same.eval()(image), theirs.eval()(image)["out"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change", ["integer key", "sparse", "meta", "complex"])
def test_a_file_with_tensors_a_model_cannot_take_is_refused(tmp_path, change):
    state = write_torchvision_file(tmp_path / "resnet18.pth", "resnet18")
    key = "layer2.0.conv1.weight"
    if change == "integer key":
        state[7] = state.pop(key)
    elif change == "sparse":
        state[key] = state[key].to_sparse()
    elif change == "meta":
        state[key] = torch.empty(state[key].shape, device="meta")
    else:
        state[key] = state[key].to(torch.complex64)  # (would have been cast to real silently)
    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(DataError, match="is not a state_dict .a mapping of names to dense tensors of real numbers."):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "resnet18.pth"))


def test_a_weights_file_that_is_a_fifo_is_refused_without_blocking(tmp_path, no_hang):
    import os

    os.mkfifo(tmp_path / "resnet18.pth")
    with no_hang(20), pytest.raises(DataError, match="resnet18.pth is a special file"):
        build_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / "resnet18.pth"))
