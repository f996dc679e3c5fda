"""Inference from a checkpoint (or its ONNX export): load the model, predict with optional test-time augmentation.

    from segmentnet.results.inference import run_model
    masks = run_model("runs/NAME/best.pt", ["a.jpg", "b.jpg"], flip=True)   # list of HxW uint8 arrays
    masks = run_model("runs/NAME/best.onnx", ["a.jpg"])                    # the same through ONNX Runtime

Test-time augmentation (TTA) averages the softmax probabilities of several views of the image:
each scale in `scales` (the image resized by that factor, the logits resized back) and, with
`flip`, the horizontal mirror of each (its output mirrored back). Sliding-window inference
(`window`, `stride`) runs the model on overlapping window x window tiles and averages the logits
where tiles overlap; an image no larger than the window is run whole.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.checkpoint import load_checkpoint
from ..core.description import ModelDescription
from ..core.distributed import pick_device
from ..core.errors import DataError, UsageError
from ..core.files import open_regular
from ..core.weights import is_weights
from ..deployment.onnx_model import OnnxModel
from ..training.transforms import normalize


@dataclass(frozen=True)
class TTA:
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    window: int | None = None   # sliding-window tile size in pixels (None: whole image)
    stride: int | None = None   # step between tiles (default: two thirds of the window)

    def __post_init__(self):
        if not self.scales or any(not s > 0 for s in self.scales):
            raise UsageError(f"scales must be positive numbers, got {self.scales}")
        if self.window is not None and self.window < 8:
            raise UsageError(f"--window must be >= 8 pixels, got {self.window}")
        if self.stride is not None and (self.window is None or not 1 <= self.stride <= self.window):
            raise UsageError(f"--stride needs --window and must be in 1..window, got stride {self.stride}, "
                             f"window {self.window}")

    @property
    def tag(self) -> str:
        """A short name for output files: '' for plain inference, e.g. "-flip-s0.75_1_1.25-w512s341"."""
        tag = "-flip" if self.flip else ""
        if self.scales != (1.0,):
            tag += "-s" + "_".join(f"{s:g}" for s in self.scales)
        if self.window:
            tag += f"-w{self.window}s{self.tile_stride}"
        return tag

    @property
    def tile_stride(self) -> int:
        return self.stride or max(1, self.window * 2 // 3)


# ----------------------------------------------------------------------------- command-line options


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.75,1.0,1.25, got {text!r}")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options Evaluate.py and Predict.py share."""
    parser.add_argument("--flip", action="store_true", help="also predict the mirrored image and average")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S1,S2,...",
                        help="multi-scale TTA, e.g. 0.75,1.0,1.25 (default: 1.0 only)")
    parser.add_argument("--window", type=int, default=None, metavar="SIZE",
                        help="sliding-window inference with SIZE x SIZE tiles (for images larger than the crop)")
    parser.add_argument("--stride", type=int, default=None, metavar="S",
                        help="step between sliding-window tiles (default: 2/3 of --window)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def tta_from_args(args) -> TTA:
    return TTA(flip=args.flip, scales=tuple(args.scales), window=args.window, stride=args.stride)


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    device = pick_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return device


# ----------------------------------------------------------------------------- the model


def load_model(checkpoint, device="cpu", check=None) -> tuple[nn.Module | OnnxModel, ModelDescription]:
    """A checkpoint path (or its loaded dict) -> (model in eval mode on device, its description).
    `check(description, name)`, when given, may refuse the file before a model is built.

    An Export.py file (.onnx) -> (OnnxModel on the CPU, its description): the same description, and
    a model called the same way, built without the model classes."""
    if not isinstance(checkpoint, dict) and Path(checkpoint).suffix.lower() == ".onnx":
        from ..deployment.onnx_model import load_onnx
        if torch.device(device).type != "cpu":
            print(f"note: {checkpoint} runs on ONNX Runtime's CPU provider; the device {device} is not used",
                  file=sys.stderr)
        model, description = load_onnx(checkpoint)
        if check is not None:
            check(description, checkpoint)
        return model, description
    if isinstance(checkpoint, dict):
        state, name = checkpoint, "(given as a dict)"
    else:
        if Path(checkpoint).is_dir():
            raise DataError(f"checkpoint {checkpoint} is a folder, not a checkpoint file; give a file "
                            f"TrainSegmentNet.py wrote, such as {Path(checkpoint) / 'best.pt'}")
        state, name = load_checkpoint(checkpoint), checkpoint
    description = read_checkpoint_description(state, name)
    if check is not None:
        check(description, name)
    from ..models import model_from_checkpoint  # (here: an ONNX file needs none of the model classes)

    return model_from_checkpoint(state, name).to(device).eval(), description


def read_checkpoint_description(state: dict, name) -> ModelDescription:
    """The description of a checkpoint that has weights; DataError naming the checkpoint when an
    entry inference reads is missing or of the wrong kind."""
    if "model" not in state:
        raise DataError(f"checkpoint {name} lacks model: it was not written by TrainSegmentNet.py")
    if not is_weights(state["model"]):
        raise DataError(f"checkpoint {name}: the entries model are not what TrainSegmentNet.py writes (a dict of "
                        f"names to dense tensors of real numbers); the file is corrupt or was not written by SegmentNet")
    return ModelDescription.read(state, f"checkpoint {name}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_device(model: nn.Module | OnnxModel) -> torch.device:
    return model.device if isinstance(model, OnnxModel) else next(model.parameters()).device


# ----------------------------------------------------------------------------- prediction


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Tile offsets along one side: every stride, plus a last tile flush with the far edge."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window_logits(model: nn.Module, x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Logits of x (normalised NCHW) from window x window tiles, averaged where they overlap."""
    h, w = x.shape[-2:]
    if h <= window and w <= window:
        return model_logits(model, x)
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for top in window_starts(h, window, stride):
        for left in window_starts(w, window, stride):
            logits = model_logits(model, x[..., top:top + window, left:left + window])
            if total is None:
                total = torch.zeros(x.shape[0], logits.shape[1], h, w, device=x.device)
            th, tw = logits.shape[-2:]
            total[..., top:top + th, left:left + tw] += logits.float()
            count[..., top:top + th, left:left + tw] += 1
    return total / count


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, mean, std, tta: TTA = TTA()) -> torch.Tensor:
    """uint8 NCHW images -> class probabilities NxCxHxW (float32, on the model's device), TTA averaged."""
    model.eval()
    x = normalize(images.to(model_device(model)), mean, std)
    h, w = x.shape[-2:]
    total = None
    views = 0
    for scale in tta.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if tta.flip else (False,)):
            view = scaled.flip(-1) if mirrored else scaled
            if tta.window:
                logits = sliding_window_logits(model, view, tta.window, tta.tile_stride)
            else:
                logits = model_logits(model, view)
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
            views += 1
    return total / views


def predict_masks(model: nn.Module, images: list[np.ndarray], mean, std, tta: TTA = TTA(),
                  batch_size: int = 4) -> list[np.ndarray]:
    """HxWx3 uint8 arrays -> HxW uint8 class-index arrays; images of equal size share a batch."""
    masks: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.shape, []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2)
            labels = predict_probabilities(model, batch, mean, std, tta).argmax(1).to(torch.uint8).cpu().numpy()
            for i, label in zip(chunk, labels):
                masks[i] = label
    return masks


@contextmanager
def open_image(path):
    """Image.open(path) in a with block; every way a hostile file fails becomes a DataError naming it:
    not an image, truncated or corrupt (also while decoding inside the block), or a header declaring
    more pixels than Pillow's limit (a decompression bomb: a tiny file that would need gigabytes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path, "image") as f, Image.open(f) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, the image declares more pixels than {Image.MAX_IMAGE_PIXELS} ({exc}). "
                        f"A small file declaring a huge image is a decompression bomb; a genuine photo that "
                        f"large must be shrunk before prediction") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); the file is not an image, or is "
                        f"truncated or corrupt") from None


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header alone, with open_image's checks."""
    with open_image(path) as image:
        return image.size


def read_rgb(path) -> np.ndarray:
    """An image file -> HxWx3 uint8 array; a clear error for a file that is not an image."""
    with open_image(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def as_rgb_array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {array.shape} dtype {array.dtype}")
    return array


def run_model(checkpoint, images, device: str = "auto", flip: bool = False, scales=(1.0,),
              window: int | None = None, stride: int | None = None, batch_size: int = 4) -> list[np.ndarray]:
    """For notebooks: a checkpoint and images (paths, PIL images or HxWx3 uint8 arrays) -> class-index masks."""
    model, description = load_model(checkpoint, resolve_device(device))
    arrays = [as_rgb_array(image) for image in images]
    tta = TTA(flip=flip, scales=tuple(scales), window=window, stride=stride)
    return predict_masks(model, arrays, description.mean, description.std, tta, batch_size)


# ----------------------------------------------------------------------------- a whole split


def evaluate_checkpoint(checkpoint, data_dir=None, split: str = "val", tta: TTA = TTA(), device="cpu",
                        workers: int = 2, progress: bool = True) -> dict:
    """Scores of a checkpoint on a split of its own dataset (dataset.json of data_dir/<its dataset>).

    data_dir defaults to the one the checkpoint was trained with. Returns metrics.scores_from_confusion's
    dict plus what was evaluated (checkpoint, dataset, split, images, tta, classes).
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..core.files import plain_name
    from ..training.data import SegmentationDataset, collate_pairs, read_dataset_json
    from ..training.transforms import eval_transform
    from .metrics import ConfusionMatrix

    model, described = load_model(checkpoint, device)
    device = model_device(model)  # (an ONNX file runs on the CPU)
    data_dir = Path(data_dir if data_dir is not None else described.data_dir)
    root = data_dir / plain_name(described.dataset, f"the dataset named by {checkpoint}")
    info = read_dataset_json(root, complete=True)  # the entries used below, all checked
    dataset = SegmentationDataset(root, split, eval_transform())
    if info["num_classes"] != described.num_classes:
        raise DataError(f"{root} has {info['num_classes']} classes but checkpoint {checkpoint} predicts "
                        f"{described.num_classes}: point --data-dir at the dataset it was trained on")
    if not dataset.with_masks:
        raise DataError(f"split {split!r} of {root} has no masks to evaluate against; use Predict.py for it")
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_pairs)
    confusion = ConfusionMatrix(described.num_classes, described.ignore_index, device=device)
    for images, masks in tqdm(loader, desc=f"evaluate {split}", disable=not progress, leave=False):
        probs = predict_probabilities(model, images, described.mean, described.std, tta)
        confusion.update(masks.to(device), probs.argmax(1))
    scores = confusion.compute()
    return {"checkpoint": str(checkpoint), "dataset": info["name"], "data_dir": str(data_dir), "split": split,
            "images": len(dataset), "epoch": described.epoch, "model": described.model_name,
            "tta": {"flip": tta.flip, "scales": list(tta.scales), "window": tta.window,
                    "stride": tta.tile_stride if tta.window else None},
            "classes": list(described.classes or info["classes"]), **scores}
