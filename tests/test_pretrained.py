"""Pretrained backbones: torchvision's key layout, every tensor in its place, clear errors for bad files.

The torchvision layouts are written out here from the architectures' description, independently of
segmentnet.models.backbones, and checked against torchvision's published parameter counts.
"""
from __future__ import annotations

import urllib.error

import pytest
import torch

from segmentnet.archive import DataError
from segmentnet.models import build_model
from segmentnet.models.backbones import VGG, ResNet
from segmentnet.models.pretrained import BACKBONE_FILES

VGG_CONFIG = {"vgg16": ([2, 2, 3, 3, 3], False), "vgg19": ([2, 2, 4, 4, 4], False), "vgg16_bn": ([2, 2, 3, 3, 3], True)}
RESNET_BLOCKS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}
# torchvision's weights metadata: num_params of the ImageNet classifiers
TORCHVISION_PARAMETERS = {"vgg16": 138_357_544, "vgg19": 143_667_240, "vgg16_bn": 138_365_992,
                          "resnet50": 25_557_032, "resnet101": 44_549_160}


def bn_keys(name: str, channels: int) -> dict[str, tuple]:
    # The published files predate num_batches_tracked, so it is left out, as in them.
    return {f"{name}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")}


def torchvision_layout(arch: str, width: int = 64, fc_width: int = 4096) -> dict[str, tuple]:
    """Key -> shape of torchvision's state_dict of `arch` (channels scaled by width / 64)."""
    shapes: dict[str, tuple] = {}
    if arch.startswith("vgg"):
        convs_per_stage, batch_norm = VGG_CONFIG[arch]
        index, channels = 0, 3
        for stage, convs in enumerate(convs_per_stage):
            out = width * min(2 ** stage, 8)
            for _ in range(convs):
                shapes[f"features.{index}.weight"], shapes[f"features.{index}.bias"] = (out, channels, 3, 3), (out,)
                if batch_norm:
                    shapes.update(bn_keys(f"features.{index + 1}", out))
                index += 3 if batch_norm else 2  # conv, [bn,] relu
                channels = out
            index += 1  # max-pool
        for name, (rows, cols) in {"classifier.0": (fc_width, channels * 49), "classifier.3": (fc_width, fc_width),
                                   "classifier.6": (1000, fc_width)}.items():
            shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (rows, cols), (rows,)
        return shapes
    shapes["conv1.weight"] = (width, 3, 7, 7)
    shapes.update(bn_keys("bn1", width))
    channels = width
    for layer, blocks in enumerate(RESNET_BLOCKS[arch], start=1):
        planes = width * 2 ** (layer - 1)
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for i, (cin, cout, k) in enumerate([(channels, planes, 1), (planes, planes, 3), (planes, 4 * planes, 1)], 1):
                shapes[f"{prefix}.conv{i}.weight"] = (cout, cin, k, k)
                shapes.update(bn_keys(f"{prefix}.bn{i}", cout))
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (4 * planes, channels, 1, 1)
                shapes.update(bn_keys(f"{prefix}.downsample.1", 4 * planes))
            channels = 4 * planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, channels), (1000,)
    return shapes


def learned_count(shapes: dict[str, tuple]) -> int:
    return sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMETERS))
def test_layout_written_here_has_torchvisions_parameter_count(arch):
    assert learned_count(torchvision_layout(arch)) == TORCHVISION_PARAMETERS[arch]


BACKBONE_MODULES = {"vgg16": lambda: VGG(16), "vgg19": lambda: VGG(19), "vgg16_bn": lambda: VGG(16, batch_norm=True),
                    "resnet50": lambda: ResNet(50), "resnet101": lambda: ResNet(101)}


@pytest.mark.parametrize("arch", sorted(BACKBONE_MODULES))
def test_our_backbones_have_torchvisions_keys_and_shapes(arch):
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in BACKBONE_MODULES[arch]().state_dict().items()
                if not k.endswith("num_batches_tracked")}
    expected = {k: s for k, s in torchvision_layout(arch).items() if not k.startswith(("classifier.", "fc."))}
    assert ours == expected


def write_torchvision_file(path, arch: str, width: int, fc_width: int = 32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=generator) for k, s in torchvision_layout(arch, width, fc_width).items()}
    torch.save(state, path)
    return state


# model -> (its options, the backbone file it takes, file key prefix -> the model's key prefix)
PRETRAINED_CASES = {
    "fcn8s": ({"width": 8, "fc_width": 32}, "vgg16",
              {"features.": "backbone.features.", "classifier.0.": "fc6.", "classifier.3.": "fc7."}),
    "fcn32s": ({"width": 8, "fc_width": 32, "backbone": "vgg19"}, "vgg19",
               {"features.": "backbone.features.", "classifier.0.": "fc6.", "classifier.3.": "fc7."}),
    "segnet": ({"width": 8}, "vgg16_bn", {"features.": "encoder.features."}),
    "icnet": ({"width": 8}, "resnet50", {"conv": "backbone.conv", "bn": "backbone.bn", "layer": "backbone.layer"}),
    "fcn_resnet50": ({"width": 8}, "resnet50", {"conv": "backbone.conv", "bn": "backbone.bn", "layer": "backbone.layer"}),
    "deeplabv3_resnet101": ({"width": 8}, "resnet101",
                            {"conv": "backbone.conv", "bn": "backbone.bn", "layer": "backbone.layer"}),
}


@pytest.mark.parametrize("name", sorted(PRETRAINED_CASES))
def test_every_backbone_tensor_lands_in_its_place(name, tmp_path):
    options, arch, prefixes = PRETRAINED_CASES[name]
    state = write_torchvision_file(tmp_path / BACKBONE_FILES[arch], arch, options["width"])
    model = build_model(name, 3, pretrained_backbone=str(tmp_path / BACKBONE_FILES[arch]), **options)
    ours = model.state_dict()
    placed = 0  # and every tensor of the model's backbone part came from the file:
    for key, tensor in state.items():
        matches = [(f, m) for f, m in prefixes.items() if key.startswith(f)]
        if not matches:  # ImageNet's classifier (SegNet: all of it; FCN: fc8)
            continue
        (file_prefix, model_prefix), = matches
        target = ours[model_prefix + key[len(file_prefix):]]
        assert torch.equal(target, tensor.reshape(target.shape)), key
        placed += 1
    assert placed == len([k for k in ours if k.startswith(tuple(prefixes.values()))
                          and not k.endswith("num_batches_tracked")])
    if name.startswith("fcn") and "resnet" not in name:  # fc6 as a 7x7 convolution over pool5's (C, 7, 7)
        fc6 = state["classifier.0.weight"]
        assert model.fc6.weight.shape == (32, 64, 7, 7) and model.fc7.weight.shape == (32, 32, 1, 1)
        assert model.fc6.weight[5, 3, 2, 4] == fc6[5, 3 * 49 + 2 * 7 + 4]
        assert torch.equal(model.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])


def test_file_of_another_backbone_is_refused_naming_the_keys(tmp_path):
    write_torchvision_file(tmp_path / "resnet.pth", "resnet50", 8)
    with pytest.raises(DataError, match=r"does not fit the vgg16 backbone: .*keys missing \(classifier.0.bias.*"
                                        r"vgg16-397923af\.pth"):
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=str(tmp_path / "resnet.pth"))


def test_file_of_another_width_is_refused_naming_the_shapes(tmp_path):
    write_torchvision_file(tmp_path / "wide.pth", "resnet50", 16)
    with pytest.raises(DataError, match=r"shapes differ, file vs model \(bn1.bias \(16,\) vs \(8,\)"):
        build_model("fcn_resnet50", 3, width=8, pretrained_backbone=str(tmp_path / "wide.pth"))


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = tmp_path / BACKBONE_FILES["vgg16_bn"]
    write_torchvision_file(path, "vgg16_bn", 8)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{path.name} is truncated or corrupt.*vgg16_bn-6c64b313\.pth"):
        build_model("segnet", 3, width=8, pretrained_backbone=str(path))


def test_missing_file_and_non_state_dict_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found.*vgg16-397923af.pth.*or true"):
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=str(tmp_path / "nothing.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(DataError, match="is not a state_dict"):
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=str(tmp_path / "list.pth"))


class NotATensor:
    pass


def test_file_with_code_is_refused(tmp_path):
    torch.save({"features.0.weight": NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(DataError, match="refused"):
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=str(tmp_path / "pickle.pth"))


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


def test_true_offline_names_the_file_and_the_cache_folder(hub_without_network):
    cache, calls = hub_without_network
    with pytest.raises(DataError) as caught:
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=True)
    message = str(caught.value)
    assert "vgg16-397923af.pth" in message and str(cache) in message and "name resolution" in message
    assert calls == ["https://download.pytorch.org/models/vgg16-397923af.pth"]


def test_true_uses_the_file_in_torch_hubs_cache_without_network(hub_without_network):
    cache, calls = hub_without_network
    cache.mkdir(parents=True)
    state = write_torchvision_file(cache / "resnet101-63fe2227.pth", "resnet101", 8)
    model = build_model("fcn_resnet101", 3, width=8, aux=False, pretrained_backbone="true")
    assert calls == []
    assert torch.equal(model.backbone.layer3[22].conv2.weight, state["layer3.22.conv2.weight"])


def test_damaged_download_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def bad_hash(url, dst, hash_prefix=None, progress=True):
        assert hash_prefix == "397923af"  # the hash in the file name is checked
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(DataError, match="download of vgg16-397923af.pth .* is damaged"):
        build_model("fcn8s", 3, width=8, fc_width=32, pretrained_backbone=True)


def test_rebuilding_from_a_checkpoint_skips_the_pretrained_file(tmp_path):
    model = build_model("segnet", 3, pretrained=False, width=8, pretrained_backbone=str(tmp_path / "gone.pth"))
    assert model is not None
