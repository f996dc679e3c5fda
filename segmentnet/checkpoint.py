"""Checkpoints: dicts of plain values and tensors, written atomically, read with weights_only=True."""
from __future__ import annotations

import errno
import glob
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .archive import DataError


class CheckpointWriteError(DataError):
    """A checkpoint could not be written (disk full, no permission); the previous one is untouched."""


class _KeepWriteError:
    """File wrapper that keeps the OSError of a failed write: torch.save reports it only as
    'unexpected pos', which would hide a full disk."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self.file.flush()


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the old file.

    A crash or a full disk at any moment leaves the previous checkpoint whole.
    """
    path = Path(path)
    for stale in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _KeepWriteError(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        cause = writer.error if writer is not None and writer.error is not None else exc
        if isinstance(cause, OSError) and isinstance(exc, (OSError, RuntimeError)):
            kept = f"the previous {path.name} is untouched" if path.exists() else "nothing was kept"
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {cause.strerror or cause} "
                f"({errno.errorcode.get(cause.errno, cause.errno)}); {kept}. Free space on that disk or "
                f"choose another folder, then run again (a training run continues with --resume "
                f"{path.parent / 'last.pt'})") from exc
        raise


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with weights_only=True: tensors and plain values only, no code ever runs."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain values, so loading "
            f"it could run code. Only load checkpoints from people you trust; SegmentNet's own never do this. "
            f"({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"checkpoint {path} is truncated or corrupt ({str(exc).splitlines()[0]}); "
                        f"use another copy (last.pt or best.pt) or train again") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"checkpoint {path} is not a SegmentNet checkpoint (no 'model' entry)")
    return state


def load_weights(model: torch.nn.Module, state_dict: dict, path) -> None:
    """load_state_dict, with every difference between the checkpoint and the model spelled out."""
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} is {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model"
              for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    for items, what in ((shapes, "differ in shape"), (missing, "are missing from the checkpoint"),
                        (unexpected, "are not in the model")):
        if items:
            more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} weight(s) {what}: {'; '.join(items[:5])}{more}")
    if problems:
        raise DataError(f"checkpoint {path} does not fit the model {type(model).__name__}: " + ". ".join(problems) +
                        ". It was trained with another model, model_options or number of classes.")
    model.load_state_dict(state_dict)


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the wrappers' prefixes (DDP's 'module.', torch.compile's '_orig_mod.')."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
