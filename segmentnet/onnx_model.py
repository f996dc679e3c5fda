"""An exported model (Export.py's .onnx file) run by ONNX Runtime's CPU provider, without the training
code's model classes: Predict.py and Evaluate.py take such a file wherever they take a checkpoint.

What a file of ours holds besides the graph (its metadata, every value text, JSON where not a word):
  segmentnet_format  FORMAT;  input  "float" (normalised NCHW float32) or "uint8" (raw NCHW RGB 0..255,
  normalised inside the graph);  opset;  model_name, model_options, num_classes, classes, palette, mean,
  std, ignore_index, dataset, data_dir, epoch: what the checkpoint said.
The graph: one input "image" (batch, 3, height, width: each any size the PyTorch model accepts) and one
output "logits" (batch, num_classes, height, width).

A file is hostile until checked: one that ONNX Runtime cannot read, that lacks our metadata, whose
metadata is malformed, or whose graph has another input or output is refused with a DataError naming it.
The bytes are handed to ONNX Runtime, not the path, so a graph cannot pull in external data files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .transforms import normalize

FORMAT = "1"
INPUT_TYPES = {"float": "tensor(float)", "uint8": "tensor(uint8)"}   # Export's --input -> ONNX's type name
DESCRIPTION_KEYS = ("model_name", "model_options", "num_classes", "classes", "palette", "mean", "std",
                    "ignore_index", "dataset", "data_dir", "epoch")


class OnnxModel:
    """Called like the PyTorch model in eval mode: normalised NCHW float32 tensor -> logits tensor (CPU).

    For a uint8-input graph the normalisation is undone (exactly, after rounding) before the call, so
    that test-time augmentation and sliding windows work the same for every kind of file."""

    device = torch.device("cpu")

    def __init__(self, session, input_type: str, mean, std):
        self.session, self.input_type, self.mean, self.std = session, input_type, mean, std

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32)
        if self.input_type == "uint8":
            x = raw_pixels(x, self.mean, self.std)
        (logits,) = self.session.run(["logits"], {"image": np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(logits)


def raw_pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of transforms.normalize: normalised float -> uint8 pixels."""
    zero, one = normalize(torch.zeros(1, 1, 1), mean, std), normalize(torch.ones(1, 1, 1), mean, std)
    return ((x - zero) / (one - zero)).round().clamp(0, 255).to(torch.uint8)


def load_onnx(path) -> tuple[OnnxModel, dict]:
    """An Export.py file -> (OnnxModel, its description: the checkpoint's entries inference reads)."""
    import onnxruntime as ort

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"ONNX file {path} cannot be read: {exc.strerror or exc}; check the path") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are no news to a user
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types (InvalidProtobuf, Fail, ...) share no base
        raise DataError(f"{path} cannot be read by ONNX Runtime ({first_line(exc)}): the file is truncated or "
                        f"corrupt, or not an ONNX model. Export it again with Export.py") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("segmentnet_format") != FORMAT:
        raise DataError(f"{path} is an ONNX model, but not one Export.py wrote (its metadata lacks "
                        f"segmentnet_format {FORMAT}: the class names, palette and normalisation that "
                        f"prediction needs). Export the checkpoint with Export.py")
    state = parse_description(meta, path)
    check_graph(session, meta.get("input"), state["num_classes"], path)
    return OnnxModel(session, meta["input"], state["mean"], state["std"]), state


def parse_description(meta: dict, path) -> dict:
    from .inference import check_description

    state = {}
    for key in DESCRIPTION_KEYS:
        if key not in meta:
            raise DataError(f"ONNX file {path}: its metadata lacks {key}; the file is damaged or was not "
                            f"written by Export.py. Export the checkpoint again")
        if key == "model_name":
            state[key] = meta[key]
            continue
        try:
            state[key] = json.loads(meta[key])
        except ValueError:
            raise DataError(f"ONNX file {path}: its metadata {key} is not JSON ({meta[key]!r:.60}); the file is "
                            f"damaged or was not written by Export.py") from None
    state["config"] = {"data_dir": state.pop("data_dir")}  # where a checkpoint keeps it
    check_description(state, f"ONNX file {path}")
    return state


def check_graph(session, input_type, num_classes: int, path) -> None:
    """The graph has the one input and output Export.py makes, of the type its metadata says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = INPUT_TYPES.get(input_type)
    problems = []
    if expected is None:
        problems.append(f"its metadata input is {input_type!r}, not one of {', '.join(INPUT_TYPES)}")
    if [i.name for i in inputs] != ["image"] or len(inputs[0].shape) != 4:
        problems.append(f"its inputs are {[(i.name, i.shape) for i in inputs]}, not one 4-D 'image'")
    elif expected is not None and inputs[0].type != expected:
        problems.append(f"its input is of type {inputs[0].type}, not {expected} as its metadata says")
    if [o.name for o in outputs] != ["logits"] or len(outputs[0].shape) != 4:
        problems.append(f"its outputs are {[(o.name, o.shape) for o in outputs]}, not one 4-D 'logits'")
    elif outputs[0].shape[1] not in (num_classes, None) and not isinstance(outputs[0].shape[1], str):
        problems.append(f"it outputs {outputs[0].shape[1]} classes but its metadata names {num_classes}")
    if problems:
        raise DataError(f"ONNX file {path}: {'; '.join(problems)}; it was not written by Export.py or is damaged. "
                        f"Export the checkpoint again")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
