"""A checkpoint -> an ONNX file for inference anywhere (Export.py), verified against PyTorch before it lands.

The file holds the inference model only: the main logits of the model in eval mode, no auxiliary
heads. Its input is float (normalised, as the PyTorch model takes it) or uint8 (raw RGB; the
normalisation with the checkpoint's mean and std is part of the graph); batch, height and width are
dynamic. The opset is fixed (OPSET unless asked otherwise) and written in the metadata with what
prediction needs (onnx_model.py). Before the file is renamed into place, ONNX Runtime and PyTorch run
on the same random images of each check size; beyond the tolerance the export fails and leaves no file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.description import ModelDescription
from ..core.errors import SegmentNetError
from ..core.files import atomic_path
from ..core.outputs import check_replaceable, signature, writing
from ..results.inference import load_model, model_logits
from ..training.transforms import normalize
from .onnx_model import FORMAT, INPUT_TYPES, first_line, load_onnx

OPSET = 18               # ONNX Runtime 1.14+ and every torch since 2.1 run it
ATOL, RTOL = 1e-4, 1e-4  # a logit agrees when |ONNX - PyTorch| <= ATOL + RTOL * max |PyTorch logits|


class ExportError(SegmentNetError):
    """The model could not be exported, or the export does not compute what the model does."""


@dataclass(frozen=True)
class Tolerance:
    logits: float = 1.0   # the fraction of logits that must agree (1: every one)
    argmax: float = 0.0   # the fraction of pixels whose predicted class must agree


EXACT = Tolerance()
# SegNet's unpooling puts each value where its pool's maximum was; where two maxima nearly tie, the
# runtimes' rounding picks different ones, and the logits around such a pixel differ widely.
AT_MAXIMA = Tolerance(logits=0.95, argmax=0.99)


def tolerance_of(model: nn.Module) -> Tolerance:
    return AT_MAXIMA if getattr(getattr(model, "decoder", None), "unpools_at_maxima", False) else EXACT


@dataclass(frozen=True)
class Check:
    """One verification: ONNX Runtime against PyTorch on a batch of random images of one size."""
    shape: tuple[int, int, int, int]   # of the input images
    max_difference: float
    allowed: float            # ATOL + RTOL * max |PyTorch logits|
    logits_within: float      # the fraction of logits that differ by at most `allowed`
    argmax_agreement: float   # the fraction of pixels where both predict the same class
    tolerance: Tolerance = EXACT

    @property
    def passed(self) -> bool:
        return self.logits_within >= self.tolerance.logits and self.argmax_agreement >= self.tolerance.argmax

    def __str__(self) -> str:
        required = "" if self.tolerance == EXACT else (f" (required: {100 * self.tolerance.logits:g}% of logits "
                                                       f"within it, {100 * self.tolerance.argmax:g}% argmax)")
        return (f"check {'x'.join(map(str, self.shape))}: largest |logit difference| {self.max_difference:.2e} "
                f"(allowed {self.allowed:.2e}; {100 * self.logits_within:.3f}% of logits within it), argmax "
                f"agrees on {100 * self.argmax_agreement:.3f}% of pixels{required}")


def compare(got: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance = EXACT) -> Check:
    """How closely ONNX Runtime's logits `got` match PyTorch's `expected` (both N x C x H x W)."""
    allowed = ATOL + RTOL * float(expected.abs().max())
    difference = (got - expected).abs()
    batch, _, height, width = expected.shape
    return Check((batch, 3, height, width), float(difference.max()), allowed, float((difference <= allowed).float().mean()),
                 float((got.argmax(1) == expected.argmax(1)).float().mean()), tolerance)


class InferenceGraph(nn.Module):
    """What the ONNX file computes: image -> the model's main logits; uint8 images are normalised first."""

    def __init__(self, model: nn.Module, input_type: str, mean, std):
        super().__init__()
        self.model, self.input_type, self.mean, self.std = model, input_type, mean, std

    def forward(self, image):
        x = normalize(image, self.mean, self.std) if self.input_type == "uint8" else image
        return model_logits(self.model, x)


def inference_only(model: nn.Module) -> nn.Module:
    """The model without its auxiliary heads (they serve only the training loss)."""
    if isinstance(getattr(model, "aux_heads", None), nn.ModuleDict):
        model.aux_heads = nn.ModuleDict()
        model.aux_weights = {}
    return model


def default_check_sizes(description: ModelDescription) -> list[tuple[int, int, int]]:
    """(batch, height, width): the training crop, and a batch of 2 at a larger, odd size."""
    crop = description.config.get("crop_size")
    crop = crop if isinstance(crop, int) and 32 <= crop <= 2048 else 256
    return [(1, crop, crop), (2, crop * 3 // 4 + 1, crop * 5 // 4 + 1)]


def to_onnx(graph: InferenceGraph, example: torch.Tensor, opset: int, name: str):
    """torch.onnx's exporter (torch.export underneath) with dynamic batch, height and width -> ModelProto."""
    dynamic = torch.export.Dim.DYNAMIC
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter's progress lines
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)                    # and its translation notes
    try:
        with quiet, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=["logits"],
                                        dynamic_shapes={"image": {0: dynamic, 2: dynamic, 3: dynamic}})
        proto = program.model_proto
    except Exception as exc:  # the exporter's errors (torch.export's, onnxscript's) share no base class
        operator = untranslated_operator(exc)
        raise ExportError(
            f"model {name} could not be exported to ONNX opset {opset}"
            + (f": the operator {operator} has no ONNX form" if operator else "")
            + f" ({type(exc).__name__}: {first_line(exc)}). Try another --opset, or train a model that exports "
            f"(every model SegmentNet.py lists does); nothing was written") from None
    finally:
        logging.disable(disabled)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"the exporter wrote opset {written} where opset {opset} was asked for (it could not "
                          f"convert this model to {opset}); export with --opset {written}. Nothing was written")
    return proto


def untranslated_operator(exc: BaseException) -> str | None:
    """The operator the exporter found no ONNX form for, such as 'aten.foo.default', from its error chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = re.search(r"No ONNX function found for (?:<OpOverload\(op='([\w.:]+)', overload='(\w+)'\)>|([\w.:]+))",
                          str(exc))
        if found:
            return f"{found[1]}.{found[2]}" if found[1] else found[3]
        exc = exc.__cause__ or exc.__context__
    return None


def add_metadata(proto, description: ModelDescription, input_type: str, opset: int) -> None:
    """Our description into the ModelProto; the signature first, so that Export.py may replace the file."""
    proto.doc_string = (f"{signature('Export')}. SegmentNet model {description.model_name}: input 'image' "
                        f"(batch, 3, height, width) {input_type}, output 'logits' (batch, classes, height, width)")
    values = {"segmentnet_format": FORMAT, "input": input_type, "opset": str(opset), **description.metadata()}
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def verify(graph: InferenceGraph, session, sizes, tolerance: Tolerance = EXACT, seed: int = 0) -> list[Check]:
    """Run ONNX Runtime and PyTorch on the same random images of each (batch, height, width)."""
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for batch, height, width in sizes:
        pixels = torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
        image = pixels if graph.input_type == "uint8" else normalize(pixels, graph.mean, graph.std)
        with torch.no_grad():
            expected = graph(image).float()
        try:
            (got,) = session.run(["logits"], {"image": image.numpy()})
        except Exception as exc:  # ONNX Runtime's error types share no base class
            raise ExportError(f"the exported model fails on an input of {batch}x3x{height}x{width} where PyTorch's "
                              f"runs ({first_line(exc)}); nothing was written. Try another --opset, and report "
                              f"it with the model's name") from None
        got = torch.from_numpy(got)
        if got.shape != expected.shape:
            raise ExportError(f"the exported model gives logits of shape {tuple(got.shape)} for an input of "
                              f"{batch}x3x{height}x{width}, PyTorch {tuple(expected.shape)}; nothing was written")
        checks.append(compare(got, expected, tolerance))
    return checks


def export_checkpoint(checkpoint, out=None, input_type: str = "float", opset: int = OPSET, sizes=None,
                      log=print) -> Path:
    """Export, verify (printing each check through `log`) and write `out` (default: checkpoint .onnx).

    `out` may replace only a file Export.py wrote; on any failure no file is left at `out`."""
    if input_type not in INPUT_TYPES:
        raise ExportError(f"input must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        raise ExportError(f"{checkpoint} is an ONNX file already; give the checkpoint (.pt) it was exported from")
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out} must end in .onnx: Predict.py and Evaluate.py tell an export by its suffix")
    check_replaceable(out, "Export", "--out")
    model, description = load_model(checkpoint)
    sizes = list(sizes) if sizes else default_check_sizes(description)
    if len({size[1:] for size in sizes}) < 2:
        raise ExportError(f"the export is checked on at least two different image sizes (height and width are "
                          f"dynamic), got {['x'.join(map(str, size[1:])) for size in sizes]}")
    graph = InferenceGraph(inference_only(model), input_type, description.mean, description.std).eval()
    example_dtype = torch.uint8 if input_type == "uint8" else torch.float32
    _, height, width = sizes[0]
    proto = to_onnx(graph, torch.zeros(2, 3, height, width, dtype=example_dtype), opset, description.model_name)
    add_metadata(proto, description, input_type, opset)
    with writing(out), atomic_path(out) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        exported, _ = load_onnx(tmp, name=f"the export of {checkpoint}")  # the file as Predict will read it
        checks = verify(graph, exported.session, sizes, tolerance_of(model))
        for check in checks:
            log(str(check))
        failed = [check for check in checks if not check.passed]
        if failed:
            raise ExportError(f"the exported model does not compute what the checkpoint's does ({failed[0]}); "
                              f"nothing was written. Try another --opset, and report it with the model's name")
    return out
