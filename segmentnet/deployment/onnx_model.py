"""An exported model (Export.py's .onnx file) run by ONNX Runtime's CPU provider, without the training
code's model classes: Predict.py and Evaluate.py take such a file wherever they take a checkpoint.

What a file of ours holds besides the graph (its metadata, every value text, JSON where not a word):
  segmentnet_format  FORMAT;  input  "float" (normalised NCHW float32) or "uint8" (raw NCHW RGB 0..255,
  normalised inside the graph);  opset;  model_name, model_options, num_classes, classes, palette, mean,
  std, ignore_index, dataset, data_dir, epoch: what the checkpoint said.
The graph: one input "image" (batch, 3, height, width: each any size the PyTorch model accepts) and one
output "logits" (batch, num_classes, height, width).

A file is hostile until checked: one that cannot be parsed, that names external data files (a
graph could otherwise read any file into its weights), that lacks our metadata or whose metadata is
malformed, or whose graph has another input or output, or fixed sizes, is refused with a DataError naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.description import ModelDescription
from ..core.errors import DataError
from ..core.files import read_regular
from ..training.transforms import normalize

FORMAT = "1"
MAX_ONNX_BYTES = 2 ** 31  # protobuf's limit: a larger model keeps external data, which is refused anyway
INPUT_TYPES = {"float": "tensor(float)", "uint8": "tensor(uint8)"}   # Export's --input -> ONNX's type name


class OnnxModel:
    """Called like the PyTorch model in eval mode: normalised NCHW float32 tensor -> logits tensor (CPU).

    For a uint8-input graph the normalisation is undone (exactly, after rounding) before the call, so
    that test-time augmentation and sliding windows work the same for every kind of file."""

    device = torch.device("cpu")

    def __init__(self, session, input_type: str, num_classes: int, mean, std, path):
        self.session, self.input_type, self.num_classes = session, input_type, num_classes
        self.mean, self.std, self.path = mean, std, path

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32)
        if self.input_type == "uint8":
            x = raw_pixels(x, self.mean, self.std)
        try:
            (logits,) = self.session.run(["logits"], {"image": np.ascontiguousarray(x.numpy())})
        except Exception as exc:  # ONNX Runtime's error types share no base class
            raise DataError(f"ONNX file {self.path} failed on an input of {'x'.join(map(str, x.shape))} "
                            f"({first_line(exc)}); export the checkpoint again with Export.py") from None
        self.check_output(logits, x.shape)
        return torch.from_numpy(logits)

    def check_output(self, logits, input_shape) -> None:
        """The graph computed what it declares: float32 logits (batch, num_classes, height, width) of
        the input's batch and size. ONNX Runtime only warns when a run's output differs from the declared
        one (a dynamic Reshape can make 300 channels of a declared 21), and such logits would give class
        indices beyond the classes, or masks of another size, without an error."""
        expected = (input_shape[0], self.num_classes, *input_shape[2:])
        shape = tuple(getattr(logits, "shape", ()))
        dtype = getattr(logits, "dtype", type(logits).__name__)
        if not isinstance(logits, np.ndarray) or dtype != np.float32 or shape != expected:
            raise DataError(f"ONNX file {self.path} computed {dtype} logits of shape {shape} for an input of "
                            f"{'x'.join(map(str, input_shape))}, not float32 of {expected} as its graph and metadata "
                            f"declare; the file was not written by Export.py or is damaged. Export the checkpoint "
                            f"again")


def raw_pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of transforms.normalize: normalised float -> uint8 pixels."""
    zero, one = normalize(torch.zeros(1, 1, 1), mean, std), normalize(torch.ones(1, 1, 1), mean, std)
    return ((x - zero) / (one - zero)).round().clamp(0, 255).to(torch.uint8)


def load_onnx(path, name=None) -> tuple[OnnxModel, ModelDescription]:
    """An Export.py file -> (OnnxModel, its description: what inference reads of a checkpoint too).
    `name`: how errors call the file (default: its path)."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    name = name or path
    try:
        data = read_regular(path, "ONNX file", MAX_ONNX_BYTES)
    except OSError as exc:
        raise DataError(f"ONNX file {name} cannot be read: {exc.strerror or exc}; check the path") from None
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise DataError(f"{name} cannot be read as an ONNX model ({first_line(exc)}): the file is truncated or "
                        f"corrupt, or not an ONNX model. Export it again with Export.py") from None
    external = [tensor.name for tensor in all_tensors(proto.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise DataError(f"ONNX file {name} keeps tensors ({', '.join(external[:3])}) in external files; Export.py "
                        f"never does, and loading them could read any file on this machine. Refused")
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    if meta.get("segmentnet_format") != FORMAT:
        raise DataError(f"{name} is an ONNX model, but not one Export.py wrote (its metadata lacks "
                        f"segmentnet_format {FORMAT}: the class names, palette and normalisation that "
                        f"prediction needs). Export the checkpoint with Export.py")
    description = ModelDescription.from_metadata(meta, name)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are no news to a user
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types (InvalidProtobuf, Fail, ...) share no base
        raise DataError(f"{name} cannot be run by this ONNX Runtime {ort.__version__} ({first_line(exc)}): the "
                        f"file is damaged, or its opset {meta.get('opset', '?')} is newer than this ONNX Runtime "
                        f"runs. Export it again with Export.py (--opset 18)") from None
    check_graph(session, meta.get("input"), description.num_classes, name)
    return (OnnxModel(session, meta["input"], description.num_classes, description.mean, description.std, name),
            description)


def all_tensors(graph):
    """Every tensor a graph holds: initialisers, sparse ones, node attributes, in subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def check_graph(session, input_type, num_classes: int, name) -> None:
    """The graph has the one input and output Export.py makes: input (batch, 3, height, width) of the
    type its metadata says, batch and sizes not fixed; output float logits (batch, num_classes, height, width)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = INPUT_TYPES.get(input_type)
    problems = []
    if expected is None:
        problems.append(f"its metadata input is {input_type!r}, not one of {', '.join(INPUT_TYPES)}")
    if [i.name for i in inputs] != ["image"] or len(inputs[0].shape) != 4:
        problems.append(f"its inputs are {[(i.name, i.shape) for i in inputs]}, not one 4-D 'image'")
    else:
        batch, channels, height, width = inputs[0].shape
        if expected is not None and inputs[0].type != expected:
            problems.append(f"its input is of type {inputs[0].type}, not {expected} as its metadata says")
        if channels != 3 or any(isinstance(d, int) for d in (batch, height, width)):
            problems.append(f"its input has the shape {inputs[0].shape}, not (batch, 3, height, width) with "
                            f"batch, height and width free")
    if [o.name for o in outputs] != ["logits"] or len(outputs[0].shape) != 4:
        problems.append(f"its outputs are {[(o.name, o.shape) for o in outputs]}, not one 4-D 'logits'")
    elif outputs[0].type != "tensor(float)" or outputs[0].shape[1] != num_classes:
        problems.append(f"it outputs {outputs[0].type} of shape {outputs[0].shape}, not float logits of "
                        f"{num_classes} classes as its metadata says")
    if problems:
        raise DataError(f"ONNX file {name}: {'; '.join(problems)}; it was not written by Export.py or is damaged. "
                        f"Export the checkpoint again")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
