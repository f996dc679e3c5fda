"""Where a training is (TrainState): its progress, its plan of epochs and learning-rate schedule, and
its clock; the plan fitted to a time budget; the entries it keeps in a checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import is_number
from ..core.distributed import DistEnv, broadcast_from_main
from ..core.errors import DataError
from .optim import optimizer_steps_per_epoch

MAX_TIME_BUDGET = 10 * 525960  # minutes (ten years): a larger budget is a typo, and 60 x 1e308 is no number
MAX_SECONDS = 1e12         # a checkpoint's elapsed time or pace beyond this is damaged (30,000 years)
MIN_EPOCH_SECONDS = 1e-3   # a pace below a millisecond an epoch is no measurement: it would divide to infinity
BUDGET_MARGIN = 1.03  # an epoch may run a little slower than the recent ones; the budget is a promise
PACE_EPOCHS = 4  # the pace is the mean of this many epochs: single epochs vary by ~10 %, which made the plan jitter
COUNTERS = ("epoch", "step_in_epoch", "best_miou", "best_epoch", "nonfinite_steps")  # top-level checkpoint entries


@dataclass
class TrainState:
    # fixed for a run
    steps_per_epoch: int              # batches per epoch (per process)
    grad_accum: int                   # batches per optimiser step
    aux_weights: dict = field(default_factory=dict)  # loss weights of auxiliary outputs (model's, then config's)
    # the plan (refitted after every epoch under a time budget)
    planned_epochs: int = 0
    total_steps: int = 0              # optimiser steps over which the learning rate decays to 0
    warmup_steps: int = 0
    # progress
    epoch: int = 0                    # the epoch in progress (0-based)
    step_in_epoch: int = 0            # its batches done (0 at an epoch's start)
    global_step: int = 0              # batches done since the training began
    lr: float = 0.0                   # the learning rate of the last step
    epoch_losses: list = field(default_factory=list)  # train losses of the epoch's steps so far
    nonfinite_steps: int = 0          # steps skipped for a NaN or infinite loss
    best_miou: float = -1.0
    best_epoch: int = -1
    # the clock: a time budget counts the whole training, validation included, across resumes
    clock_start: float = field(default_factory=time.time)
    elapsed_before: float = 0.0       # seconds of the runs this one resumes
    epoch_seconds: float = 0.0        # the recent pace (EpochPace)
    # the run folder, once claimed (runs.prepare_run_dir)
    run_dir: Path | None = None
    run_id: str | None = None

    def count_step(self, lr: float, loss: float | None) -> None:
        """A batch done at learning rate `lr`; its loss, or None for a step skipped as not finite."""
        self.global_step += 1
        self.step_in_epoch += 1
        self.lr = lr
        if loss is None:
            self.nonfinite_steps += 1
        else:
            self.epoch_losses.append(loss)

    def epoch_loss(self) -> float:
        """The mean loss of the epoch's finite steps so far (NaN before any)."""
        return float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_losses = []

    def elapsed_seconds(self) -> float:
        return self.elapsed_before + time.time() - self.clock_start

    def plan_epochs(self, epochs: int) -> None:
        """Fit the learning-rate schedule to `epochs` epochs (it decays to 0 at the end of the last)."""
        self.planned_epochs = epochs
        self.total_steps = optimizer_steps_per_epoch(self.steps_per_epoch, self.grad_accum) * epochs

    def fit_to_budget(self, minutes: float, max_epochs: int, epoch_seconds: float, reserve: float = 0.0) -> None:
        """With a time budget of `minutes`: as many more epochs as the minutes left hold at the recent
        pace (training, validation and saving), at most `max_epochs` in all, and the schedule fitted to
        them. `reserve` seconds are kept for the validation that ends the last epoch."""
        left = minutes * 60 - self.elapsed_seconds() - reserve
        room = left / (max(epoch_seconds, MIN_EPOCH_SECONDS) * BUDGET_MARGIN)  # finite: every term is bounded
        more = int(min(max(room, 0.0), max_epochs))
        self.plan_epochs(min(max_epochs, self.epoch + more))
        self.warmup_steps = min(self.warmup_steps, self.total_steps // 2)  # a short plan still decays

    def share_plan(self, env: DistEnv) -> None:
        """Every process follows rank 0's plan: each one's clock differs a little, and a process that
        planned one epoch fewer would leave the others waiting for it for ever."""
        self.plan_epochs(broadcast_from_main(self.planned_epochs, env))
        self.warmup_steps = broadcast_from_main(self.warmup_steps, env)

    def state_dict(self) -> dict:
        """The checkpoint entries of the training's position (beside the model's and optimiser's)."""
        return {"scheduler": {"global_step": self.global_step, "total_steps": self.total_steps,
                              "warmup_steps": self.warmup_steps, "planned_epochs": self.planned_epochs,
                              "elapsed_seconds": self.elapsed_seconds(), "epoch_seconds": self.epoch_seconds},
                **{key: getattr(self, key) for key in COUNTERS},
                "epoch_losses": list(self.epoch_losses)}

    def load_state_dict(self, state: dict, path) -> None:
        """Take up a checkpoint's position (checkpoint.check_checkpoint has checked the types), its
        elapsed time and pace included (an older checkpoint, without them: from now), so that a time
        budget and the records' elapsed_seconds go on across a resume."""
        if state["step_in_epoch"] >= self.steps_per_epoch:
            raise DataError(f"checkpoint {path} stopped after batch {state['step_in_epoch']} of an epoch, but an epoch "
                            f"of this run has {self.steps_per_epoch} batches (another train split, batch_size or "
                            f"number of processes?): resume with the settings it was trained with, or start a new run")
        for key in COUNTERS:
            setattr(self, key, state[key])
        self.epoch_losses = list(state["epoch_losses"])
        self.global_step = state["scheduler"]["global_step"]
        elapsed, pace = (state["scheduler"].get(k, 0.0) for k in ("elapsed_seconds", "epoch_seconds"))
        if not all(is_number(x) and 0 <= x <= MAX_SECONDS for x in (elapsed, pace)):
            raise DataError(f"checkpoint {path}: its scheduler's elapsed_seconds {elapsed!r} or epoch_seconds "
                            f"{pace!r} is not a number of seconds (0 to {MAX_SECONDS:g}); use another copy "
                            f"(last.pt or best.pt) or start a new run")
        self.elapsed_before, self.epoch_seconds = float(elapsed), float(pace)

    def summary(self, scores: dict) -> dict:
        return {"epoch": self.epoch, "best_miou": self.best_miou, "best_epoch": self.best_epoch,
                "final_scores": scores, "nonfinite_steps": self.nonfinite_steps}


class EpochPace:
    """Seconds per epoch, for fitting the plan to a time budget: the mean of the last PACE_EPOCHS
    epochs' training (and saving), plus the last validation's cost spread over `val_every` epochs."""

    def __init__(self, val_every: int):
        self.val_every, self.recent, self.val_seconds = val_every, [], 0.0

    def add(self, seconds: float) -> None:
        self.recent = (self.recent + [seconds])[-PACE_EPOCHS:]

    def seconds(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1) + self.val_seconds / self.val_every
