"""A training's checkpoint: what it holds (training_checkpoint), whether a run may continue from one
(check_resumable), and putting its optimiser, scaler, position and random states back (restore)."""
from __future__ import annotations

import dataclasses

import torch

from ..core.checkpoint import clean_state_dict
from ..core.config import is_number
from ..core.description import ModelDescription
from ..core.distributed import unwrap
from ..core.errors import DataError
from ..datasets.common import IGNORE_INDEX
from ..models.legacy import LAST_RELEASE, upgrade
from .data import DatasetFacts
from .state import TrainState

OPTIMIZER_STATE = {"adamw": ("step", "exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}
FIT_HINT = "Resume with the settings it was trained with (see its config.json), or start a new run."


def model_description(cfg, facts: DatasetFacts, run_id: str | None) -> ModelDescription:
    """What the run's checkpoints tell inference of the model (checked once, when the run starts)."""
    return ModelDescription.read({
        "model_name": cfg.model, "model_options": dict(cfg.model_options), "num_classes": facts.num_classes,
        "classes": list(facts.classes), "palette": [list(c) for c in facts.palette], "mean": list(facts.mean),
        "std": list(facts.std), "ignore_index": IGNORE_INDEX, "dataset": cfg.dataset, "run_id": run_id,
        "config": dataclasses.asdict(cfg)}, f"the description of run {run_id}")


def training_checkpoint(model, optimizer, scaler, state: TrainState, description: ModelDescription) -> dict:
    return {
        "model": unwrap(model).state_dict(),
        **description.entries(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        **state.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def check_resumable(state: dict, cfg, num_classes: int, path) -> None:
    """A checkpoint that check_checkpoint let through, but that this run cannot continue: written by
    an older release, or of another model, dataset, optimiser or (inside an epoch) batch size."""
    described = ModelDescription.read(state, f"checkpoint {path}")
    weights = clean_state_dict(state["model"])
    if upgrade(described.model_name, described.model_options, weights, path)[1] is not weights:
        raise DataError(f"checkpoint {path} was written by release {LAST_RELEASE} or before, whose "
                        f"models this release rebuilds on torchvision: Evaluate.py and Predict.py read it, "
                        f"but resuming its training needs that release (git checkout {LAST_RELEASE})")
    problems = []
    if described.model_name != cfg.model:
        problems.append(f"it is a {described.model_name!r} model, this run trains {cfg.model!r}")
    if described.num_classes != num_classes:
        problems.append(f"it has {described.num_classes} classes, the dataset {cfg.dataset!r} has {num_classes}")
    if described.model_options != dict(cfg.model_options):
        problems.append(f"its model_options are {described.model_options}, this run's are {cfg.model_options}")
    if described.dataset != cfg.dataset:
        problems.append(f"it was trained on {described.dataset!r}, this run uses {cfg.dataset!r}")
    trained_batch = described.config.get("batch_size", cfg.batch_size)
    if state.get("step_in_epoch") and trained_batch != cfg.batch_size:
        problems.append(f"it stopped inside an epoch with batch_size {trained_batch}, this run's is "
                        f"{cfg.batch_size} (the batches already done would not line up)")
    if problems:
        hint = ("It was planned by --auto: resume it with --auto true, which takes the settings of its plan"
                if described.config.get("auto") is True and not getattr(cfg, "auto", False) else FIT_HINT)
        raise DataError(f"checkpoint {path} does not fit this run: " + "; ".join(problems) + ". " + hint)
    trained_with = described.config.get("optimizer", cfg.optimizer)
    if trained_with != cfg.optimizer:
        raise DataError(f"checkpoint {path} does not fit this run: it was trained with optimizer {trained_with!r}, "
                        f"this run uses {cfg.optimizer!r} (their states differ). " + FIT_HINT)


def restore(state: dict, path, optimizer, scaler, train_state: TrainState, optimizer_name: str, time_budget: float,
            max_epochs: int) -> None:
    """Put a checkpoint's position, optimiser, scaler and random states back, and the plan fitted to
    this run's time budget (minutes); DataError naming the entry when one does not fit this run
    (check_checkpoint has checked their types)."""
    train_state.load_state_dict(state, path)
    if time_budget > 0 and train_state.epoch_seconds:  # the epochs that this run's budget still holds
        train_state.fit_to_budget(time_budget, max_epochs, train_state.epoch_seconds)
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise DataError(f"checkpoint {path}: its optimizer state does not fit this model "
                        f"({str(exc).splitlines()[0]}); use another copy (last.pt or best.pt) or start a new run") from None
    problems = []
    expected = OPTIMIZER_STATE[optimizer_name]
    for group, before in zip(optimizer.param_groups, fresh):
        problems += [f"param_groups {key} is {group.get(key)!r}" for key, value in before.items()
                     if not _same_kind(group.get(key), value)]
        for param in group["params"]:
            entries = optimizer.state.get(param, {})
            if entries and any(key not in entries for key in expected):
                problems.append(f"a parameter's state has {sorted(entries)}, not {list(expected)}")
            problems += [f"{key} of a parameter of shape {tuple(param.shape)} has shape {tuple(value.shape)}"
                         for key, value in entries.items()
                         if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape]
            problems += [f"{key} of a parameter is {type(value).__name__}, not a tensor" for key, value in entries.items()
                         if key in expected and not isinstance(value, (torch.Tensor, type(None)))]
    if problems:
        raise DataError(f"checkpoint {path}: its optimizer state is damaged: {'; '.join(sorted(set(problems))[:5])}. "
                        f"Use another copy (last.pt or best.pt) or start a new run")
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        try:
            for device, rng in enumerate(state["rng"]["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng, device)
        except RuntimeError as exc:
            raise DataError(f"checkpoint {path}: its 'rng' cuda states are damaged ({str(exc).splitlines()[0]}); "
                            f"use another copy (last.pt or best.pt) or start a new run") from None


def _same_kind(loaded, fresh) -> bool:
    """Whether an optimiser setting loaded from a checkpoint is of the kind torch's own is."""
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        return type(loaded) is type(fresh)
    if isinstance(fresh, (int, float)):
        return is_number(loaded)
    if isinstance(fresh, (tuple, list)):
        return isinstance(loaded, (tuple, list)) and len(loaded) == len(fresh) and all(map(_same_kind, loaded, fresh))
    return True


