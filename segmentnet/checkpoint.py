"""Checkpoints: dicts of plain values and tensors, written atomically, read with weights_only=True."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .archive import DataError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the old file.

    A crash or a full disk at any moment leaves the previous checkpoint whole.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the wrappers' prefixes (DDP's 'module.', torch.compile's '_orig_mod.')."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
