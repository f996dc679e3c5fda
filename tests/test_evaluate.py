"""Evaluate.py: its scores equal an independent computation from Predict.py's class-index PNGs."""
from __future__ import annotations

import json

import numpy as np
from conftest import run_script
from PIL import Image
from results_helpers import colour_classifier_checkpoint, tiny_segmentnet_checkpoint

import Evaluate
import Predict


def independent_ious(pred_dir, mask_dir, num_classes: int) -> dict[int, float]:
    """IoU per class over all pixels, straight from the PNG files; classes with an empty union are left out."""
    intersection = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    for mask_path in sorted(mask_dir.iterdir()):
        truth = np.array(Image.open(mask_path))
        prediction = np.array(Image.open(pred_dir / mask_path.name))
        valid = truth != 255
        for c in range(num_classes):
            t, p = (truth == c) & valid, (prediction == c) & valid
            intersection[c] += (t & p).sum()
            union[c] += (t | p).sum()
    return {c: intersection[c] / union[c] for c in range(num_classes) if union[c] > 0}


def test_evaluate_equals_an_independent_computation_from_predict_pngs(small_voc, tmp_path, capsys, monkeypatch,
                                                                      two_conv_registered):
    checkpoint = colour_classifier_checkpoint(tmp_path / "net.pt", small_voc)
    val = small_voc / "voc2012" / "val"
    assert Predict.main([str(checkpoint), str(val / "images"), "--out", str(tmp_path / "pred"), "--flip",
                         "--no-progress"]) == 0
    assert Evaluate.main([str(checkpoint), "--flip", "--no-progress", "--workers", "0"]) == 0
    printed = capsys.readouterr().out

    ious = independent_ious(tmp_path / "pred" / "masks", val / "masks", 21)
    result = json.loads((tmp_path / "eval-net-val-flip.json").read_text())   # next to the checkpoint
    assert len(ious) >= 4 and 0.2 < np.mean(list(ious.values())) < 0.99       # a non-trivial case
    assert abs(result["miou"] - np.mean(list(ious.values()))) < 1e-12
    for c in range(21):
        assert (result["per_class_iou"][c] is None) == (c not in ious)
        if c in ious:
            assert abs(result["per_class_iou"][c] - ious[c]) < 1e-12
    assert result["absent_classes"] == [c for c in range(21) if c not in ious]
    confusion = np.array(result["confusion"])
    assert confusion.shape == (21, 21) and confusion.sum() == sum(
        (np.array(Image.open(p)) != 255).sum() for p in (val / "masks").iterdir())
    assert abs(result["pixel_acc"] - np.trace(confusion) / confusion.sum()) < 1e-12
    # The rule for absent classes is stated, and they are listed by name.
    assert "left out of the mean" in printed and "absent classes" in printed
    markdown = (tmp_path / "eval-net-val-flip.md").read_text()
    assert f"{result['miou']:.4f}" in markdown and "| class | IoU |" in markdown


def test_evaluate_out_folder_and_missing_split(small_voc, tmp_path, capsys):
    from segmentnet.core.cli import call_main

    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    assert call_main(Evaluate.main, [str(checkpoint), "--split", "test", "--no-progress"]) == 2
    assert "split 'test'" in capsys.readouterr().err
    assert call_main(Evaluate.main, [str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt not found" in capsys.readouterr().err


def run_evaluate(*argv):
    return run_script(Evaluate.main, ["--no-progress", "--workers", "0", "--device", "cpu", *argv])


def test_evaluate_replaces_only_its_own_files(small_voc, tmp_path):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    json_path, md_path = tmp_path / "eval-net-val.json", tmp_path / "eval-net-val.md"
    for users, other in ((json_path, md_path), (md_path, json_path)):
        users.write_text("my notes")
        status, err = run_evaluate(checkpoint)
        assert status == 2 and "Traceback" not in err
        assert err.startswith(f"error: output {users} already exists and was not written by Evaluate.py")
        assert users.read_text() == "my notes" and not other.exists()   # neither file written
        users.unlink()
    assert run_evaluate(checkpoint)[0] == 0
    first = json.loads(json_path.read_text())
    assert first["note"].startswith("written by SegmentNet's Evaluate.py") and "Evaluate.py" in md_path.read_text()
    assert run_evaluate(checkpoint)[0] == 0                        # its own files: replaced
    assert json.loads(json_path.read_text())["miou"] == first["miou"]


def test_evaluate_never_writes_into_a_prepared_dataset(small_voc, tmp_path):
    import shutil

    dataset = tmp_path / "ds"
    (dataset / "val").mkdir(parents=True)
    shutil.copy(small_voc / "voc2012" / "dataset.json", dataset)
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    status, err = run_evaluate(checkpoint, "--out", dataset / "val" / "scores")
    assert status == 2 and "is inside the prepared dataset" in err and str(dataset / "val" / "scores") in err
    # A checkpoint kept inside a dataset: the default, next to it, is refused as well.
    shutil.copy(checkpoint, dataset / "net.pt")
    status, err = run_evaluate(dataset / "net.pt")
    assert status == 2 and "is inside the prepared dataset" in err and "Traceback" not in err
    assert sorted(p.name for p in dataset.rglob("*")) == ["dataset.json", "net.pt", "val"]


def test_evaluate_bad_arguments_are_one_line_errors(small_voc, tmp_path):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    (tmp_path / "afile").write_text("mine")
    for argv, expected in (
            (["--out", tmp_path / "afile"], f"--out {tmp_path / 'afile'} is an existing file, not a folder"),
            (["--workers", "-1"], "--workers must be >= 0"),
            (["--split", "../../val"], "--split must be the name of a split"),
    ):
        status, err = run_evaluate(checkpoint, *argv)
        assert status == 2 and err.startswith(f"error: {expected}") and "Traceback" not in err, (argv, err)
    assert (tmp_path / "afile").read_text() == "mine"
    status, err = run_evaluate(tmp_path)
    assert status == 2 and f"checkpoint {tmp_path} is a folder, not a checkpoint file" in err


def test_a_partial_dataset_json_is_named_not_a_crash(small_voc, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_voc / "voc2012", data / "voc2012")
    info = json.loads((data / "voc2012" / "dataset.json").read_text())
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", data)
    for missing, message in (("name", "name is missing"), ("classes", "classes is missing"),
                             ("num_classes", "num_classes must be a whole number from 1 to 255, got None")):
        (data / "voc2012" / "dataset.json").write_text(json.dumps({k: v for k, v in info.items() if k != missing}))
        status, err = run_evaluate(checkpoint)
        assert status == 2 and "Traceback" not in err, err
        assert err.startswith(f"error: {data / 'voc2012' / 'dataset.json'} is damaged: ") and message in err, err
    for text, message in (('{"name": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper than 64 levels"),
                          (json.dumps(info | {"mean": [1e39, 0.4, 0.4]}), "mean must be 3 numbers from -1.0 to 2.0"),
                          (json.dumps(info | {"std": [1e-300, 0.2, 0.2]}), "std must be 3 numbers from 0.0001")):
        (data / "voc2012" / "dataset.json").write_text(text)
        status, err = run_evaluate(checkpoint)
        assert status == 2 and "Traceback" not in err and message in err, err


BAD_ENTRIES = {
    "config": ("not a dict", "config must be a JSON object (dict) of hyperparameters"),
    "dataset": (5, "dataset must be a dataset name (text), got 5"),
    "ignore_index": ("255", "ignore_index must be a whole number from 0 to 255, got '255'"),
    "classes": ("background", "classes must be a list of class names, got 'background'"),
    "model_options": ({1: 8}, "model_options must be a JSON object (dict) of model options, got {1: 8}"),
}


def test_checkpoint_entries_that_inference_reads_are_checked(small_voc, tmp_path):
    import torch

    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    state = torch.load(checkpoint, weights_only=True)
    for key, (value, message) in BAD_ENTRIES.items():
        torch.save(state | {key: value}, tmp_path / "bad.pt")
        for main, extra in ((Evaluate.main, ["--workers", "0"]), (Predict.main, [
                small_voc / "voc2012" / "val" / "images", "--out", tmp_path / "pred"])):
            status, err = run_script(main, [tmp_path / "bad.pt", *extra, "--no-progress"])
            assert status == 2 and "Traceback" not in err, (key, err)
            assert f"checkpoint {tmp_path / 'bad.pt'} is damaged" in err and message in err, (key, err)
    config = state["config"] | {"data_dir": ["data"]}
    torch.save(state | {"config": config}, tmp_path / "bad.pt")
    status, err = run_script(Evaluate.main, [tmp_path / "bad.pt", "--workers", "0", "--no-progress"])
    assert status == 2 and "config must be a JSON object (dict) of hyperparameters, its data_dir a text" in err, err
