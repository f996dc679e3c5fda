"""ModelDescription: the one typed description of a trained model, read from a checkpoint's entries or
an ONNX file's metadata, written back as either, validated in one place."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from segmentnet.core.description import METADATA_KEYS, ModelDescription
from segmentnet.core.errors import DataError

ENTRIES = {"model_name": "segmentnet", "model_options": {"width": 8, "depth": 2}, "num_classes": 3,
           "classes": ["sky", "road", "car"], "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
           "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "ignore_index": 255, "dataset": "camvid",
           "run_id": "abc", "config": {"data_dir": "elsewhere", "crop_size": 96}, "epoch": 7}


def test_a_checkpoints_entries_become_a_typed_description_and_back():
    described = ModelDescription.read(ENTRIES, "checkpoint x.pt")
    assert (described.model_name, described.num_classes, described.epoch, described.data_dir) == (
        "segmentnet", 3, 7, "elsewhere")
    assert described.class_names == ["sky", "road", "car"]
    assert described.entries() == {k: v for k, v in ENTRIES.items() if k != "epoch"}  # (the epoch: the state's)
    assert ModelDescription.read(described.entries(), "again") == dataclasses.replace(described, epoch=None)


def test_absent_optional_entries_take_the_first_releases_meaning():
    required = {key: ENTRIES[key] for key in ("model_name", "num_classes", "mean", "std", "palette")}
    described = ModelDescription.read(required, "checkpoint old.pt")
    assert (described.ignore_index, described.dataset, described.model_options, described.data_dir,
            described.epoch) == (255, "voc2012", {}, "data", None)
    assert described.class_names == ["class 0", "class 1", "class 2"]


@pytest.mark.parametrize("changes, message", [
    ({"num_classes": 0}, "num_classes must be a whole number from 1 to 255, got 0"),
    ({"mean": [0.5, 0.4]}, "mean must be 3 numbers"),
    ({"std": [0.0, 0.2, 0.2]}, "std must be 3 numbers from 0.0001"),
    ({"palette": [[0, 0, 0]]}, "palette must hold a colour for each of the 3 classes, got 1"),
    ({"classes": ["sky"]}, "classes must name each of the 3 classes, got 1 names"),
    ({"ignore_index": 2}, "ignore_index must not be a class's index (0 to 2), got 2"),
    ({"model_options": {"width": float("nan")}}, "model_options must be a JSON object"),
])
def test_each_broken_entry_is_named(changes, message):
    with pytest.raises(DataError, match="checkpoint bad.pt: the entries") as caught:
        ModelDescription.read(ENTRIES | changes, "checkpoint bad.pt")
    assert message in str(caught.value)


def test_a_checkpoints_epoch_that_is_not_whole_is_not_known():  # (a checkpoint's epoch: the training state's)
    for epoch in (-1, 2.5, "seven"):
        assert ModelDescription.read(ENTRIES | {"epoch": epoch}, "checkpoint x.pt").epoch is None


def test_a_missing_required_entry_is_named():
    with pytest.raises(DataError, match=r"checkpoint y.pt lacks palette, mean: it was not written by TrainSegmentNet"):
        ModelDescription.read({k: v for k, v in ENTRIES.items() if k not in ("palette", "mean")}, "checkpoint y.pt")


def test_onnx_metadata_is_json_text_and_reads_back_as_the_same_description():
    described = ModelDescription.read({k: v for k, v in ENTRIES.items() if k != "classes"}, "checkpoint x.pt")
    meta = described.metadata()
    assert set(meta) == set(METADATA_KEYS) and meta["model_name"] == "segmentnet"
    assert json.loads(meta["classes"]) == ["class 0", "class 1", "class 2"]  # (numbered: the file names them)
    back = ModelDescription.from_metadata(meta, "x.onnx")
    assert back == dataclasses.replace(described, classes=["class 0", "class 1", "class 2"], run_id=None,
                                       config={"data_dir": "elsewhere"})


@pytest.mark.parametrize("key, value, message", [
    ("palette", None, "its metadata lacks palette"),
    ("mean", "[0.5, 0.4", "its metadata mean is not JSON"),
    ("epoch", '"seven"', "epoch must be a whole number >= 0 or null"),
    ("num_classes", "300", "num_classes must be a whole number from 1 to 255"),
])
def test_damaged_onnx_metadata_is_refused_naming_the_file(key, value, message):
    meta = ModelDescription.read(ENTRIES, "checkpoint x.pt").metadata()
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    with pytest.raises(DataError, match="ONNX file x.onnx") as caught:
        ModelDescription.from_metadata(meta, "x.onnx")
    assert message in str(caught.value)


def test_the_description_imports_neither_the_models_nor_inference():
    code = ("import sys; import segmentnet.core.description; "
            "print(sorted(m for m in sys.modules if m.startswith('segmentnet.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = eval(loaded.stdout)  # (a list of names printed by the child)
    assert "segmentnet.core.description" in modules
    assert not [m for m in modules if m.split(".")[1] in ("models", "results", "deployment", "training")], modules
