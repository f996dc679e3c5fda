"""Export.py: every registered model to ONNX, verified; Predict.py and Evaluate.py on the ONNX file."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import run_script
from results_helpers import colour_classifier_checkpoint, read_png, save_model_checkpoint, tiny_segmentnet_checkpoint

import Evaluate
import Export
import Predict
from segmentnet.core.errors import DataError
from segmentnet.datasets.voc2012 import CLASSES
from segmentnet.deployment import export
from segmentnet.deployment.onnx_model import OnnxModel
from segmentnet.models import MODELS
from segmentnet.results.inference import load_model
from segmentnet.training.transforms import normalize

CHECK = "40x56,33x47"  # Export.py's --check-sizes for the tiny SegmentNet



@pytest.mark.slow
def test_a_uint8_export_equals_the_float_export_after_normalisation(tmp_path, small_voc):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    status, err = run_script(Export.main, [checkpoint, "--check-sizes", CHECK])
    assert status == 0, err
    status, err = run_script(Export.main, [checkpoint, "--input", "uint8", "--out", tmp_path / "raw.onnx",
                                           "--check-sizes", CHECK])
    assert status == 0, err
    as_float, described = load_model(tmp_path / "best.onnx")
    as_uint8, _ = load_model(tmp_path / "raw.onnx")
    assert (as_float.input_type, as_uint8.input_type) == ("float", "uint8")
    assert as_uint8.session.get_inputs()[0].type == "tensor(uint8)"
    pixels = torch.randint(0, 256, (2, 3, 45, 61), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    (from_pixels,) = as_uint8.session.run(["logits"], {"image": pixels.numpy()})
    (from_normalised,) = as_float.session.run(["logits"], {"image": normalize(pixels, described.mean, described.std).numpy()})
    np.testing.assert_allclose(from_pixels, from_normalised, rtol=1e-5, atol=1e-5)
    assert np.abs(from_pixels).max() > 0.1  # (not trivially equal)
    # As Predict calls them (normalised input; the uint8 model takes the pixels back exactly).
    normalised = normalize(pixels, described.mean, described.std)
    np.testing.assert_allclose(as_uint8(normalised).numpy(), from_pixels, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as_float(normalised).numpy(), from_normalised, rtol=1e-6, atol=1e-6)
    # The metadata says what a client needs.
    meta = {p.key: p.value for p in onnx.load(tmp_path / "raw.onnx").metadata_props}
    assert (meta["input"], meta["opset"], json.loads(meta["mean"]), json.loads(meta["classes"])) == (
        "uint8", str(export.OPSET), described.mean, list(CLASSES))
    assert onnx.load(tmp_path / "raw.onnx").opset_import[0].version == export.OPSET


@pytest.mark.slow
def test_predict_on_the_onnx_file_writes_what_the_checkpoint_gives_without_the_model_classes(tmp_path, small_voc):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0
    val = small_voc / "voc2012" / "val"
    common = [val / "images", "--masks", val / "masks", "--limit", 4, "--no-progress", "--device", "cpu"]
    assert run_script(Predict.main, [checkpoint, *common, "--out", tmp_path / "from_pt"])[0] == 0
    # A fresh interpreter: prediction and evaluation from the ONNX file import neither the models nor torchvision.
    code = ("import sys, Predict, Evaluate; Predict.main(sys.argv[1:]); Evaluate.main([sys.argv[1], '--no-progress', "
            "'--workers', '0']); assert 'segmentnet.models' not in sys.modules and 'torchvision' not in sys.modules, "
            "'model code imported'")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "best.onnx"), *map(str, common),
                           "--out", str(tmp_path / "from_onnx")], cwd=Predict.__file__.rsplit("/", 1)[0],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "eval-best-onnx-val.json").is_file()
    for kind in ("masks", "overlays", "panels"):
        names = sorted(p.name for p in (tmp_path / "from_pt" / kind).iterdir())
        assert len(names) == 4 and names == sorted(p.name for p in (tmp_path / "from_onnx" / kind).iterdir())
        for file in names:
            assert np.array_equal(read_png(tmp_path / "from_pt" / kind / file)[2],
                                  read_png(tmp_path / "from_onnx" / kind / file)[2]), (kind, file)


def test_evaluate_scores_the_onnx_file_as_the_checkpoint(tmp_path, small_voc, monkeypatch, two_conv_registered):
    # (two_conv: a nearest-colour classifier, mIoU well above 0)
    checkpoint = colour_classifier_checkpoint(tmp_path / "best.pt", small_voc)
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0
    linked = tmp_path / "linked"  # a dataset folder that is a link (to a mounted volume, say) is the user's choice
    linked.mkdir()
    (linked / "voc2012").symlink_to(small_voc / "voc2012")
    for file, data_dir in ((checkpoint, small_voc), (tmp_path / "best.onnx", linked)):
        status, err = run_script(Evaluate.main, [file, "--data-dir", data_dir, "--no-progress", "--workers", 0])
        assert status == 0, err
    from_pt = json.loads((tmp_path / "eval-best-val.json").read_text())
    from_onnx = json.loads((tmp_path / "eval-best-onnx-val.json").read_text())
    assert from_onnx["confusion"] == from_pt["confusion"]
    assert from_onnx["miou"] == from_pt["miou"] and 0 < from_pt["miou"] < 1
    assert from_onnx["checkpoint"].endswith("best.onnx") and from_onnx["images"] == from_pt["images"] == 8


def foreign_onnx(path):
    """A valid ONNX model that Export.py did not write: y = x, no metadata."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    return path


def with_metadata(source, path, **changes):
    proto = onnx.load(source)
    for entry in proto.metadata_props:
        if entry.key in changes:
            entry.value = changes[entry.key]
    onnx.save(proto, path)
    return path


def graph_with_our_metadata(source, path, image_shape, node, logits_shape, external: bool = False):
    """A hand-made graph carrying the metadata of the Export.py file `source`."""
    helper = onnx.helper
    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, image_shape)
    logits = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, logits_shape)
    shape = helper.make_tensor("shape", onnx.TensorProto.INT64, [4], [1, 21, 4, 4])
    if external:  # the tensor's bytes "in" a file outside
        shape.ClearField("int64_data")
        shape.data_location = onnx.TensorProto.EXTERNAL
        shape.external_data.add(key="location", value="../../../etc/passwd")
    graph = helper.make_graph([node], "g", [image], [logits], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.extend(onnx.load(source).metadata_props)
    path.write_bytes(model.SerializeToString())  # (not onnx.save, which acts on external data itself)
    return path


def reshaping_onnx(source, path, dims):
    """A graph that declares Export.py's output (n, 21, h, w) and metadata, but computes the image
    reshaped to `dims` (names of the input's n, c, h, w, or -1), through a shape only known at run time:
    ONNX Runtime keeps the declared shape and, running it, only warns."""
    helper = onnx.helper
    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])
    logits = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 21, "h", "w"])
    index = {name: k for k, name in enumerate("nchw")}
    initializer = [helper.make_tensor(f"at{k}", onnx.TensorProto.INT64, [1], [k]) for k in range(5)]
    initializer.append(helper.make_tensor("minus1", onnx.TensorProto.INT64, [1], [-1]))
    nodes = [helper.make_node("Shape", ["image"], ["s"])]
    for name, k in index.items():
        nodes.append(helper.make_node("Slice", ["s", f"at{k}", f"at{k + 1}"], [name]))
    nodes += [helper.make_node("Concat", [d if d != "-1" else "minus1" for d in dims], ["full"], axis=0),
              helper.make_node("Shape", ["full"], ["length"]),
              helper.make_node("Slice", ["full", "at0", "length"], ["target"]),  # (its length unknown before a run)
              helper.make_node("Reshape", ["image", "target"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [image], [logits], initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.extend(onnx.load(source).metadata_props)
    path.write_bytes(model.SerializeToString())
    return path


def test_a_foreign_or_damaged_onnx_file_gets_a_clear_error(tmp_path, small_voc):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0
    ours = tmp_path / "best.onnx"
    data = ours.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.onnx").write_bytes(bytes(range(256)) * 40)
    cases = {  # file -> (the error's words, read by Predict too: False where only Evaluate reads that entry)
        "truncated.onnx": ("cannot be read as an ONNX model", True),
        "noise.onnx": ("cannot be read as an ONNX model", True),
        foreign_onnx(tmp_path / "foreign.onnx").name: ("not one Export.py wrote", True),
        with_metadata(ours, tmp_path / "classes.onnx", classes="[oops").name: ("metadata classes is not JSON", True),
        with_metadata(ours, tmp_path / "palette.onnx", palette="[[1, 2]]").name: ("the entries palette are not", True),
        with_metadata(ours, tmp_path / "input.onnx", input="uint8").name: ("not tensor.uint8. as its metadata", True),
        with_metadata(ours, tmp_path / "dataset.onnx", dataset='"../../elsewhere"').name: ("only plain file names",
                                                                                          False),
        with_metadata(ours, tmp_path / "deep.onnx", palette="[" * 100000).name: ("metadata palette is not JSON", True),
        with_metadata(ours, tmp_path / "deep-mean.onnx", mean="[" * 994 + "]" * 994).name: (
            "metadata mean is not JSON", True),
        with_metadata(ours, tmp_path / "epoch.onnx", epoch='"soon"').name: ("epoch must be a whole number >= 0 or null, got 'soon'",
                                                                           True),
        # metadata that passed the checks but broke inference (drawn black, exit 70, every pixel class 0)
        with_metadata(ours, tmp_path / "no-colours.onnx", palette="[]").name: ("palette must hold a colour for each "
                                                                               "of the 21 classes, got 0", True),
        with_metadata(ours, tmp_path / "two-colours.onnx", palette="[[0, 0, 0], [9, 9, 9]]").name: (
            "palette must hold a colour for each of the 21 classes, got 2", True),
        with_metadata(ours, tmp_path / "ignore.onnx", ignore_index="5").name: ("ignore_index must not be a class's "
                                                                               "index .0 to 20., got 5", True),
        with_metadata(ours, tmp_path / "mean.onnx", mean="[1e39, 0.4, 0.4]").name: ("the entries mean are not", True),
        with_metadata(ours, tmp_path / "std.onnx", std="[1e-300, 0.2, 0.2]").name: ("the entries std are not", True),
        # a graph that computes other logits than it declares (ONNX Runtime only warns)
        reshaping_onnx(ours, tmp_path / "channels.onnx", ["n", "h", "c", "w"]).name: (
            r"computed float32 logits of shape \((\d+), \d+, 3, \d+\) for an input of \1x3x\d+x\d+, not float32 of "
            r"\(\1, 21, \d+, \d+\) as its graph and metadata declare", True),
        reshaping_onnx(ours, tmp_path / "rank3.onnx", ["n", "-1", "w"]).name: ("not one 4-D 'logits'", True),
        graph_with_our_metadata(ours, tmp_path / "fixed.onnx", [1, 3, 8, 14], onnx.helper.make_node(
            "Reshape", ["image", "shape"], ["logits"]), [1, 21, 4, 4]).name: ("height and width free", True),
        graph_with_our_metadata(ours, tmp_path / "external.onnx", ["n", 3, "h", "w"], onnx.helper.make_node(
            "Reshape", ["image", "shape"], ["logits"]), ["n", 21, 4, 4], external=True).name: ("external files", True),
        # reads well, fails when run (3 x h x w values cannot become 21 x 4 x 4)
        graph_with_our_metadata(ours, tmp_path / "fails.onnx", ["n", 3, "h", "w"], onnx.helper.make_node(
            "Reshape", ["image", "shape"], ["logits"]), ["n", 21, 4, 4]).name: ("failed on an input of", True),
    }
    image = small_voc / "voc2012" / "val" / "images"
    for name, (message, predict_reads_it) in cases.items():
        with pytest.raises(DataError, match=message):
            Evaluate.evaluate_checkpoint(tmp_path / name, workers=0, progress=False)
        if name in ("fails.onnx", "channels.onnx"):
            assert isinstance(load_model(tmp_path / name)[0], OnnxModel)  # (it loads: the failure is in the run)
        tools = [(Evaluate.main, [])] + ([(Predict.main, [image, "--out", tmp_path / f"out-{name}"])]
                                         if predict_reads_it else [])
        for main, args in tools:
            status, err = run_script(main, [tmp_path / name, *args, "--no-progress"])
            assert status == 2 and re.search(message, err) and "Traceback" not in err, (name, err)
        assert not list((tmp_path / f"out-{name}").glob("*/*.png"))  # nothing predicted


@pytest.mark.slow
def test_a_failed_export_leaves_no_file_and_never_replaces_a_users_file(tmp_path, small_voc, monkeypatch):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    out = tmp_path / "best.onnx"
    out.write_text("my own notes")
    status, err = run_script(Export.main, [checkpoint, "--check-sizes", CHECK])
    assert status == 2 and "was not written by Export" in err and out.read_text() == "my own notes"
    out.unlink()
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0
    first = out.read_bytes()
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0  # its own file: replaced
    monkeypatch.setattr(export, "ATOL", -1.0)  # no export can pass: as if ONNX Runtime computed otherwise
    status, err = run_script(Export.main, [checkpoint, "--out", tmp_path / "new.onnx", "--check-sizes", CHECK])
    assert status == 2 and "does not compute what the checkpoint's does" in err and "Traceback" not in err
    assert not (tmp_path / "new.onnx").exists() and out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt"]  # no temporary file left
    for argv, message in (([checkpoint, "--opset", "7"], "--opset must be from 13 to 23"),
                          ([out], "is an ONNX file already"),
                          ([checkpoint, "--out", tmp_path / "best.model"], "must end in .onnx")):
        status, err = run_script(Export.main, argv)
        assert status == 2 and message in err, err


def test_check_sizes_are_read_as_height_by_width(capsys):
    assert Export.parse_sizes("40x56, 33x47") == [(1, 40, 56), (2, 33, 47)]
    for text in ("40", "40x1", "0x5", "40x56x3", "", "40x56", "40x56,40x56"):
        with pytest.raises(SystemExit) as exit_info:
            Export.build_parser().parse_args(["best.pt", "--check-sizes", text])
        assert exit_info.value.code == 2 and "HEIGHTxWIDTH" in capsys.readouterr().err


@torch.library.custom_op("segtest::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    """An operator of our own, of which ONNX knows nothing."""
    return x.clone()


@opaque.register_fake
def _(x):
    return torch.empty_like(x)


class OpaqueNet(torch.nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(opaque(x))


def test_a_model_the_exporter_cannot_translate_fails_naming_the_operator(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "opaque_net", OpaqueNet)
    checkpoint = save_model_checkpoint(tmp_path / "best.pt", OpaqueNet(len(CLASSES)), "opaque_net", {}, tmp_path)
    status, err = run_script(Export.main, [checkpoint, "--check-sizes", CHECK])
    assert status == 2 and "the operator segtest.opaque.default has no ONNX form" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


@pytest.mark.slow
def test_the_metadata_states_the_opset_the_file_has(tmp_path, small_voc):
    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    status, err = run_script(Export.main, [checkpoint, "--opset", "20", "--check-sizes", CHECK])
    assert status == 0, err
    proto = onnx.load(tmp_path / "best.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["opset"] == "20" == str(next(o.version for o in proto.opset_import if o.domain == ""))


def test_special_files_in_place_of_models_or_outputs_are_refused_without_blocking(tmp_path, small_voc, no_hang):
    import os

    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    images = small_voc / "voc2012" / "val" / "images"
    os.mkfifo(tmp_path / "fifo.onnx")
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "zero.onnx").symlink_to("/dev/zero")   # would be read without end
    with no_hang(60):
        for model in ("fifo.onnx", "fifo.pt", "zero.onnx"):
            for main, args in ((Predict.main, [images, "--out", tmp_path / "pred"]), (Evaluate.main, [])):
                status, err = run_script(main, [tmp_path / model, *args, "--no-progress"])
                assert status == 2 and "is a special file (a fifo, a device or a socket)" in err, (model, err)
                assert "Traceback" not in err and "truncated or corrupt" not in err, err
        os.mkfifo(tmp_path / "x.onnx")                                     # Export's --out
        status, err = run_script(Export.main, [checkpoint, "--out", tmp_path / "x.onnx", "--check-sizes", CHECK])
        assert status == 2 and f"{tmp_path / 'x.onnx'} is a special file" in err, err
        os.mkfifo(tmp_path / "eval-best-val.json")                          # Evaluate's output next to it
        status, err = run_script(Evaluate.main, [checkpoint, "--no-progress", "--workers", "0"])
        assert status == 2 and f"{tmp_path / 'eval-best-val.json'} is a special file" in err, err
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("dtype,shape", [(np.float64, (2, 21, 5, 7)), (np.float32, (2, 5, 7)),
                                         (np.float32, (2, 300, 5, 7)), (np.float32, (1, 21, 5, 7))])
def test_onnx_logits_of_another_type_or_shape_than_declared_are_refused(dtype, shape):
    class Session:  # what a graph might compute at run time, whatever it declares
        def run(self, names, feeds):
            return [np.zeros(shape, dtype)]

    model = OnnxModel(Session(), "float", 21, [0.5] * 3, [0.25] * 3, "odd.onnx")
    with pytest.raises(DataError, match=re.escape(f"odd.onnx computed {np.dtype(dtype)} logits of shape {shape} for "
                                                  f"an input of 2x3x5x7, not float32 of (2, 21, 5, 7)")):
        model(torch.zeros(2, 3, 5, 7))


@pytest.mark.slow
def test_sigterm_while_verifying_leaves_no_file_and_a_killed_exports_file_is_removed_later(tmp_path, small_voc):
    import os
    import signal
    import time

    from conftest import ROOT

    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "best.pt", small_voc)
    for kill in (signal.SIGTERM, signal.SIGKILL):
        started = tmp_path / "started"
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_child.py"), "--slow-export", str(started),
                                  str(checkpoint), CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not started.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the verification never started"
            time.sleep(0.05)
        temporary = tmp_path / f".best.tmp-{child.pid}.onnx"
        assert temporary.exists()   # complete, signed, not yet verified
        child.send_signal(kill)
        _, err = child.communicate(timeout=60)
        started.unlink()
        if kill == signal.SIGTERM:
            assert child.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
            assert "stopped by signal 15: the unverified file was removed" in err
            assert sorted(os.listdir(tmp_path)) == ["best.pt"]
        else:                       # killed outright: nothing could clean up ...
            assert temporary.exists()
    assert run_script(Export.main, [checkpoint, "--check-sizes", CHECK])[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["best.onnx", "best.pt"]   # ... until the next export of that file
