"""Hypercolumns: SqueezeNet 1.1's key layout, the model, and the three stages chained on the synthetic VOC set.

The CNNs are torchvision's, random (nothing is downloaded); shallow taps (SqueezeNet's conv1 ReLU
and fire3) carry the colours that tell the synthetic objects apart.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import Hypercolumns
from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.hypercolumns.features import sample_pixels
from segmentnet.hypercolumns.file import open_hypercolumns
from segmentnet.models import build_model
from segmentnet.models.hypercolumns import Hypercolumns as HypercolumnModel

SQN = ["--cnn", "sqn", "--layers", "1,4", "--encoder-weights", "", "--progress", "false",
       "--model-options", json.dumps({"hidden": 64})]
STAGE_DIR = "voc2012-squeezenet-1_4"


def stage(name: str, data_dir, work_dir, *extra) -> int:
    return Hypercolumns.main([name, "--data-dir", str(data_dir), "--work-dir", str(work_dir), *SQN, *extra])


# ----------------------------------------------------------------------------- SqueezeNet and the model


@pytest.mark.parametrize("name,arch", [("hypercolumn_squeezenet", "squeezenet1_1"), ("hypercolumn_vgg16", "vgg16")])
def test_encoder_weights_file_fills_the_cnn(name, arch, tmp_path):
    torch.manual_seed(123)
    source = torchvision.models.get_model(arch, weights=None).state_dict()
    # (ImageNet's classifier, which the file may hold or not, is not used: VGG16's 120 M weights of it left out)
    torch.save({k: v for k, v in source.items() if k.startswith("features.")}, tmp_path / "weights.pth")
    model = build_model(name, 3, encoder_weights=str(tmp_path / "weights.pth"))
    for key, tensor in model.encoder.layers.state_dict().items():
        assert torch.equal(tensor, source[f"features.{key}"]), key
    random = build_model(name, 3)
    assert random.identity()["cnn_fingerprint"] != model.identity()["cnn_fingerprint"]


def test_forward_equals_the_classified_hypercolumns_at_any_size():
    torch.manual_seed(0)
    model = build_model("hypercolumn_squeezenet", 5, hidden=8, layers=[1, 4, 7]).eval()
    model.classifier.mean.normal_()
    model.classifier.std.uniform_(0.5, 2)
    image = torch.randn(1, 3, 45, 61)
    logits = model(image)
    assert logits.shape == (1, 5, 45, 61)
    rows, cols = torch.tensor([0, 44, 20, 7]), torch.tensor([0, 60, 33, 59])
    vectors = model.hypercolumns_at(image, rows, cols)
    assert vectors.shape == (4, model.dim) and model.dim == 64 + 128 + 256
    expected = model.classifier.classify_vectors(vectors)
    assert torch.allclose(logits[0, :, rows, cols].T, expected, atol=1e-4)


def test_cnn_frozen_by_default_and_finetuned_on_request():
    for finetune in (False, True):
        model = build_model("hypercolumn_squeezenet", 3, hidden=8, finetune=finetune).train()
        model(torch.randn(2, 3, 40, 40)).sum().backward()
        cnn_grads = [p.grad for p in model.encoder.parameters()]
        assert all((g is not None) == finetune for g in cnn_grads)
        assert all(p.grad is not None for p in model.classifier.parameters())
        assert model.encoder.training == finetune


def test_balanced_sampling_evens_out_classes_and_skips_ignored_pixels():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[:10] = 3           # 10% of the pixels
    mask[:, :5] = 255       # ignored
    rng = np.random.default_rng(0)
    balanced = sample_pixels(mask, 400, True, 255, rng)
    uniform = sample_pixels(mask, 400, False, 255, rng)
    for picked in (balanced, uniform):
        assert len(picked) == len(set(picked.tolist())) == 400 and (mask.reshape(-1)[picked] != 255).all()
    assert 0.4 < (mask.reshape(-1)[balanced] == 3).mean() < 0.6
    assert (mask.reshape(-1)[uniform] == 3).mean() < 0.2
    assert np.array_equal(sample_pixels(mask, 400, True, 255, np.random.default_rng(5)),
                          sample_pixels(mask, 400, True, 255, np.random.default_rng(5)))


# ----------------------------------------------------------------------------- the stages, chained


@pytest.fixture(scope="module")
def chained(small_voc, tmp_path_factory):
    """extract -> pretrain (with image reading made to fail) -> train; returns (work dir, extract's output)."""
    work = tmp_path_factory.mktemp("hypercolumns")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert stage("extract", small_voc, work, "--samples-per-image", "64", "--balanced", "false") == 0
    with pytest.MonkeyPatch.context() as patch:
        def no_images(*args, **kwargs):
            raise AssertionError("the pretrain stage read an image")

        patch.setattr(Image, "open", no_images)
        assert stage("pretrain", small_voc, work, "--pretrain-epochs", "8", "--pretrain-lr", "0.003",
                     "--pretrain-batch-size", "256") == 0
    assert stage("train", small_voc, work, "--", "--epochs", "4", "--crop-size", "96", "--scale-min", "0.75",
                 "--scale-max", "1.25", "--warmup-epochs", "0", "--lr", "0.003", "--batch-size", "4",
                 "--workers", "0", "--amp", "false") == 0
    return work, printed.getvalue()


def test_extract_states_the_size_and_writes_one_file(chained):
    work, printed = chained
    path = work / STAGE_DIR / "hypercolumns.bin"
    header, vectors, labels = open_hypercolumns(path)
    assert f"{path.stat().st_size / 2**20:.1f} MiB" in printed.split("wrote")[0]
    assert header["cnn"] == "squeezenet" and header["layers"] == [1, 4] and header["dataset"] == "voc2012"
    assert header["splits"] == {"train": [0, 24 * 64], "val": [24 * 64, 32 * 64]}
    assert vectors.shape == (32 * 64, 64 + 128) and np.isfinite(vectors).all()
    assert set(np.unique(labels)) <= set(range(21)) and len(np.unique(labels)) > 2
    assert not list((work / STAGE_DIR).glob(".*tmp*"))


def test_pretrained_classifier_beats_the_majority_class(chained):
    work, _ = chained
    scores = torch.load(work / STAGE_DIR / "classifier.pt", weights_only=True)["scores"]
    assert scores["pixel_acc"] > scores["majority_class_rate"] + 0.005, scores


def test_training_ends_above_the_pretrained_classifier(chained):
    work, _ = chained
    run = work / STAGE_DIR / "train"
    before = json.loads((run / "pretrained_scores.json").read_text())["miou"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[-1]["val_miou"] > before + 0.02, (before, records[-1]["val_miou"])
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["model_name"] == "hypercolumn_squeezenet" and state["model_options"]["finetune"] is False


def test_predict_writes_palette_masks(chained, small_voc, capsys):
    work, _ = chained
    images = small_voc / "voc2012" / "val" / "images"
    assert stage("predict", small_voc, work, "--images", str(images), "--out", str(work / "masks")) == 0
    for source in sorted(images.iterdir())[:3]:
        with Image.open(work / "masks" / f"{source.stem}.png") as mask, Image.open(source) as image:
            assert mask.mode == "P" and mask.size == image.size
            assert mask.getpalette()[3 * 15: 3 * 16] == [192, 128, 128]  # VOC's colour of class 15 (person)
            assert set(np.unique(np.array(mask))) <= set(range(21))
    with pytest.raises(DataError, match="--force"):
        stage("predict", small_voc, work, "--images", str(images), "--out", str(work / "masks"))
    # the stage's earlier name still works, with a note
    assert stage("run", small_voc, work, "--images", str(images), "--out", str(work / "masks"), "--force", "true") == 0
    assert "the stage run is called predict now" in capsys.readouterr().err


def test_predict_writes_only_into_a_folder_of_its_own(chained, small_voc, tmp_path):
    work, _ = chained
    image = sorted((small_voc / "voc2012" / "val" / "images").iterdir())[0]
    mask = f"{image.stem}.png"
    users = tmp_path / "users"
    users.mkdir()
    (users / mask).write_bytes(b"my mask")
    for force in ("false", "true"):                       # --force redoes only its own masks
        with pytest.raises(DataError, match=f"--out {users} already holds files that Hypercolumns did not write"):
            stage("predict", small_voc, work, "--images", str(image), "--out", str(users), "--force", force)
    assert os.listdir(users) == [mask] and (users / mask).read_bytes() == b"my mask"
    inside = small_voc / "voc2012" / "val" / "pred"
    with pytest.raises(DataError, match=f"--out {inside} is inside the prepared dataset"):
        stage("predict", small_voc, work, "--images", str(image), "--out", str(inside))
    assert not inside.exists()
    own = tmp_path / "own"
    assert stage("predict", small_voc, work, "--images", str(image), "--out", str(own)) == 0
    assert stage("predict", small_voc, work, "--images", str(image), "--out", str(own), "--force", "true") == 0
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"mine")
    (own / mask).unlink()
    (own / mask).symlink_to(victim)                       # planted in its own folder
    with pytest.raises(DataError, match=f"--out {own / mask} is a link"):
        stage("predict", small_voc, work, "--images", str(image), "--out", str(own), "--force", "true")
    assert victim.read_bytes() == b"mine"


def test_a_second_extract_and_pretrain_reuse_their_outputs(chained, small_voc, monkeypatch, capsys):
    work, _ = chained
    features, classifier = work / STAGE_DIR / "hypercolumns.bin", work / STAGE_DIR / "classifier.pt"
    stamps = features.stat().st_mtime_ns, classifier.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("the CNN ran again")

    monkeypatch.setattr(HypercolumnModel, "hypercolumns_at", must_not_run)
    monkeypatch.setattr(HypercolumnModel, "forward", must_not_run)
    assert stage("extract", small_voc, work, "--samples-per-image", "64", "--balanced", "false") == 0
    assert stage("pretrain", small_voc, work, "--pretrain-epochs", "8", "--pretrain-lr", "0.003",
                 "--pretrain-batch-size", "256") == 0
    assert (features.stat().st_mtime_ns, classifier.stat().st_mtime_ns) == stamps
    assert capsys.readouterr().out.count("kept") == 2
    # Other settings are never a silent redo: the stage stops and asks for --force.
    code = call_main(Hypercolumns.main, ["extract", "--data-dir", str(small_voc), "--work-dir", str(work), *SQN,
                                        "--samples-per-image", "32", "--balanced", "false"])
    assert code == 2 and "--force" in capsys.readouterr().err
    with pytest.raises(DataError, match="other settings"):
        stage("pretrain", small_voc, work, "--pretrain-epochs", "2")
    assert (features.stat().st_mtime_ns, classifier.stat().st_mtime_ns) == stamps


def test_a_mismatched_cnn_or_layer_set_is_refused(chained, small_voc):
    work, _ = chained
    features, classifier = work / STAGE_DIR / "hypercolumns.bin", work / STAGE_DIR / "classifier.pt"
    # pretrain on the squeezenet file, told it is VGG16's
    with pytest.raises(DataError, match="another CNN.*cnn 'squeezenet'"):
        Hypercolumns.main(["pretrain", "--data-dir", str(small_voc), "--work-dir", str(work / "other"),
                           "--cnn", "vgg", "--layers", "3,8", "--features", str(features), "--progress", "false"])
    # the train stage's model given a classifier pre-trained on another CNN, layer set or random draw
    for name, options, message in [("hypercolumn_vgg16", {"layers": [3, 8]}, "cnn 'squeezenet'"),
                                   ("hypercolumn_squeezenet", {"layers": [1]}, "layers"),
                                   ("hypercolumn_squeezenet", {"layers": [1, 4], "cnn_seed": 7},
                                    "other weights")]:
        with pytest.raises(DataError, match=message):
            build_model(name, 21, hidden=64, classifier_init=str(classifier), **options)
    with pytest.raises(DataError, match="another CNN"):
        stage("train", small_voc, work, "--model-options", json.dumps({"hidden": 64, "cnn_seed": 3}),
              "--out", str(work / "never"))


def test_script_imports_without_side_effects_and_needs_a_stage(tmp_path, monkeypatch, capsys):
    import importlib
    import os
    import sys

    monkeypatch.chdir(tmp_path)
    sys.modules.pop("Hypercolumns", None)
    module = importlib.import_module("Hypercolumns")
    assert os.listdir(tmp_path) == []
    assert call_main(module.main, ["fit"]) == 2 and "extract, pretrain, train, predict" in capsys.readouterr().err
    assert call_main(module.main, ["extract", "--", "--epochs", "2"]) == 2


def test_the_train_stage_config_holds_the_stage_settings_under_the_users_flags(chained, small_voc):
    from segmentnet.core.config import parse_config
    from segmentnet.core.errors import ConfigError
    from segmentnet.hypercolumns.train import train_config
    from TrainSegmentNet import Config as TrainConfig

    work, _ = chained
    cfg = parse_config(Hypercolumns.Config, ["--data-dir", str(small_voc), "--work-dir", str(work), *SQN])
    train_cfg = train_config(cfg, TrainConfig, ["--epochs", "3", "--loss", "jaccard"])
    assert (train_cfg.model, train_cfg.dataset, train_cfg.data_dir) == ("hypercolumn_squeezenet", "voc2012",
                                                                         str(small_voc))
    assert train_cfg.out == str(work / STAGE_DIR / "train") and (train_cfg.epochs, train_cfg.loss) == (3, "jaccard")
    assert train_cfg.model_options == {"layers": [1, 4], "hidden": 64, "finetune": False,
                                       "classifier_init": str(work / STAGE_DIR / "classifier.pt")}
    assert train_config(cfg, TrainConfig).loss == "ce" and train_config(cfg, TrainConfig).progress is False
    for flags in (["--model", "unet"], ["--data-dir", "elsewhere"], ["--dataset=voc2012"]):
        with pytest.raises(ConfigError, match="set by the train stage"):
            train_config(cfg, TrainConfig, flags)
    # A --config file after -- sits under the stage's settings, and under the user's flags.
    path = work / "train.json"
    path.write_text(json.dumps({"loss": "jaccard", "epochs": 7, "data_dir": "elsewhere", "lr": 0.5}))
    from_file = train_config(cfg, TrainConfig, ["--config", str(path), "--lr", "0.25"])
    assert (from_file.loss, from_file.epochs, from_file.data_dir, from_file.lr) == ("ce", 7, str(small_voc), 0.25)


def test_predict_refuses_another_model_before_building_it(chained, small_voc, tmp_path, monkeypatch):
    from results_helpers import tiny_segmentnet_checkpoint

    from segmentnet import models

    work, _ = chained
    other = tiny_segmentnet_checkpoint(tmp_path / "other.pt", small_voc)
    monkeypatch.setattr(models, "model_from_checkpoint", lambda *a: pytest.fail("the model was built"))
    image = sorted((small_voc / "voc2012" / "val" / "images").iterdir())[0]
    with pytest.raises(DataError, match="holds a 'segmentnet' model, not a hypercolumn model"):
        stage("predict", small_voc, work, "--images", str(image), "--checkpoint", str(other), "--out",
              str(tmp_path / "masks"))
    assert not (tmp_path / "masks").exists()
