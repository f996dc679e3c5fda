"""Checkpoints: dicts of plain values and tensors, written atomically, read with weights_only=True."""
from __future__ import annotations

import glob
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import entry_problems, is_number, is_whole
from .description import RULES as DESCRIPTION_RULES, description_problems
from .errors import DataError
from .files import is_regular, open_regular
from .outputs import OutputWriteError, os_error_text, write_advice
from .weights import is_weights


class CheckpointWriteError(OutputWriteError):
    """A checkpoint could not be written; the previous one is untouched."""


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
    writer = None
    try:
        for stale in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                writer = _KeepWriteError(f)
                torch.save(state, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError) as exc:
        cause = writer.error if writer is not None and writer.error is not None else exc
        if not isinstance(cause, OSError):
            raise
        kept = f"the previous {path.name} is untouched" if path.is_file() else "nothing was kept"
        last = path.parent / "last.pt"
        then = (f"a training run continues with --resume {last}" if last.is_file() else
                "a training run that has no checkpoint yet starts over")
        raise CheckpointWriteError(f"could not write checkpoint {path}: {os_error_text(cause)}; {kept}. "
                                   f"{write_advice(path, cause)}, then run again ({then})") from exc


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with weights_only=True: tensors and plain values only, no code ever runs."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint {path} not found")
    try:
        with open_regular(path, "checkpoint") as f:
            state = torch.load(f, map_location=map_location, weights_only=True)
    except DataError:  # (a RuntimeError too: open_regular's refusal is not a corrupt file)
        raise
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
    return check_checkpoint(state, path)


def _is_byte_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _cpu_rng_problem(value) -> str | None:
    if not _is_byte_tensor(value):
        return "is not a random-generator state (a 1-D uint8 tensor)"
    with torch.random.fork_rng(devices=[]):  # try it on, then put the present state back
        try:
            torch.set_rng_state(value)
        except (RuntimeError, ValueError) as exc:
            return f"is not a CPU random-generator state ({str(exc).splitlines()[0]})"
    return None


# What each entry must be: (test, what it should be). Entries of any checkpoint (when present; 'model'
# always), then those a training needs to resume.
WEIGHTS_RULE = (is_weights, "a mapping of names to dense tensors of real numbers")
_ANY_CHECKPOINT = {"model": WEIGHTS_RULE, **DESCRIPTION_RULES}  # (the description: read by inference and resume)
_RESUME = {
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list)
                  and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in v["param_groups"]),
                  "an optimiser state (state and param_groups)"),
    "scheduler": (lambda v: isinstance(v, dict) and all(is_whole(v.get(k)) for k in
                                                        ("global_step", "total_steps", "warmup_steps")),
                  "global_step, total_steps and warmup_steps as whole numbers >= 0"),
    "scaler": (lambda v: v is None or (isinstance(v, dict) and all(is_number(v.get(k)) and v[k] > 0 for k in
                                                                   ("scale", "growth_factor", "backoff_factor"))
                                       and is_whole(v.get("growth_interval"), 1) and is_whole(v.get("_growth_tracker"))),
               "none or a gradient scaler's state"),
    "epoch": (is_whole, "a whole number >= 0"),
    "step_in_epoch": (is_whole, "a whole number >= 0"),
    "best_miou": (lambda v: is_number(v) and -1 <= v <= 1, "a number from -1 to 1"),
    "best_epoch": (lambda v: is_whole(v, -1), "a whole number >= -1"),
    "nonfinite_steps": (is_whole, "a whole number >= 0"),
    "epoch_losses": (lambda v: isinstance(v, list) and all(map(is_number, v)), "a list of finite numbers"),
    "rng": (lambda v: isinstance(v, dict) and isinstance(v.get("cuda"), list) and all(map(_is_byte_tensor, v["cuda"]))
            and _cpu_rng_problem(v.get("torch")) is None,
            "random-generator states: torch (the CPU generator's) and cuda (a list of uint8 tensors)"),
}


def check_checkpoint(state: dict, path, resume: bool = False) -> dict:
    """The one check of a loaded checkpoint's structure: each entry has the type it must have (a
    hostile or damaged file otherwise fails deep inside torch, far from the cause). resume=True: also
    every entry a training needs to continue. Raises one DataError naming every problem."""
    rules = _ANY_CHECKPOINT | (_RESUME if resume else {})
    # run_id: not in the previous release's checkpoints; ignore_index: 255 when absent
    optional = {"run_id", "ignore_index"} if resume else set(rules) - {"model"}
    problems = entry_problems(state, {"model": WEIGHTS_RULE, **(_RESUME if resume else {})}, optional)
    problems += description_problems(state, required=set(DESCRIPTION_RULES) - optional)
    if problems:
        raise DataError(f"checkpoint {path} is damaged or was not written by TrainSegmentNet.py: "
                        f"{'; '.join(problems)}. Use another copy (last.pt or best.pt) or start a new run")
    return state


def read_progress(path: Path) -> tuple[str | None, int, int] | None:
    """(run id, epoch, step_in_epoch) of a training checkpoint, reading only those (the tensors are
    mapped, not read); None when it cannot be read or lacks them."""
    state = None
    if not is_regular(path):  # (a fifo would hang the reader)
        return None
    for mmap in (True, False):  # (a file system without mmap: read it whole)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # unreadable for any reason: the caller treats it as absent
            continue
    if not isinstance(state, dict):
        return None
    epoch, step, run_id = state.get("epoch"), state.get("step_in_epoch"), state.get("run_id")
    if type(epoch) is not int or type(step) is not int or not (run_id is None or isinstance(run_id, str)):
        return None
    return run_id, epoch, step


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
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:  # a value torch cannot copy into the parameter (is_weights lets none through)
        raise DataError(f"checkpoint {path}: its weights cannot be loaded into {type(model).__name__} "
                        f"({str(exc).splitlines()[0][:200]}); the file is corrupt or was not written by SegmentNet") from None


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the wrappers' prefixes (DDP's 'module.', torch.compile's '_orig_mod.')."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
