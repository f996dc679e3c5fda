"""The two loops: train_one_epoch (one pass over the training data, stoppable between optimiser
steps) and evaluate (full-size validation); the loss with auxiliary outputs; the stop request a signal
makes; CUDA's out-of-memory error turned into advice."""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.distributed import DistEnv, all_ranks_agree
from ..core.errors import ConfigError, NonFiniteLossError
from ..results.metrics import ConfusionMatrix
from .data import DatasetFacts
from .optim import accumulation_window, autocast_settings, lr_at, optimizer_step
from .runs import resume_hint
from .state import TrainState
from .transforms import normalize


def compute_loss(outputs, target: torch.Tensor, criterion: nn.Module, aux_weights: dict):
    """Loss of the main output plus weighted auxiliary outputs (upsampled to the label size)."""
    if not isinstance(outputs, dict):
        return criterion(outputs, target)
    total = 0.0
    for name, logits in outputs.items():
        weight = 1.0 if name == "out" else aux_weights.get(name, 0.0)
        if weight == 0:
            continue
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + weight * criterion(logits, target)
    return total




class StopRequest:
    """Set by SIGTERM or SIGINT; the loop finishes its step, saves a resumable checkpoint and exits."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)



@contextmanager
def out_of_memory_advice(cfg, state: TrainState, during: str, epoch: int):
    """Turn CUDA's out-of-memory error into one that names the settings to lower."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        settings = [f"lower batch_size {cfg.batch_size} (and raise grad_accum, now {cfg.grad_accum}, by the same "
                    f"factor to keep the effective batch)", f"lower crop_size {cfg.crop_size}"]
        if not cfg.amp:
            settings.append("set amp true (half-precision activations)")
        if not cfg.channels_last:
            settings.append("set channels_last true")
        settings.append("choose a smaller model (model_options)")
        raise ConfigError(
            f"out of GPU memory during {during} in epoch {epoch}, after {state.global_step} steps: "
            f"{str(exc).splitlines()[0]}\nTo need less memory: {'; '.join(settings)}. Validation runs whole images "
            f"one at a time, so there only amp or a smaller model helps. Change them, "
            f"then {resume_hint(state.run_dir)}") from exc



@dataclass(frozen=True)
class StepSettings:
    """What an optimiser step takes from the config, the dataset and the machine (train_one_epoch's)."""
    env: DistEnv                        # the device and the processes
    autocast_dtype: torch.dtype | None  # None: float32
    mean: tuple                         # the dataset's normalisation
    std: tuple
    lr: float                           # the peak of the schedule (optim.lr_at)
    poly_power: float
    grad_accum: int                     # batches per optimiser step
    channels_last: bool
    skip_nonfinite: bool                # skip a step whose loss is NaN or infinite instead of stopping
    progress: bool                      # show a progress bar (on the main process)

    @classmethod
    def of(cls, cfg, env: DistEnv, facts: DatasetFacts) -> StepSettings:
        return cls(env, autocast_settings(env.device, cfg.amp, cfg.amp_dtype)[0], facts.mean, facts.std, cfg.lr,
                   cfg.poly_power, cfg.grad_accum, cfg.channels_last, cfg.skip_nonfinite, cfg.progress and env.is_main)


@dataclass
class EpochResult:
    loss: float                # mean training loss of the epoch's finite steps (this process)
    images: int                # images this process trained on
    data_wait_seconds: float   # time the loop waited for the loader (the device sat idle)
    finished: bool             # False: a stop request ended it part way (the state says where)


def train_one_epoch(model, loader, criterion, optimizer, scaler, state: TrainState, settings: StepSettings,
                    stop: StopRequest) -> EpochResult:
    """One pass over the training data, from state.step_in_epoch on; the state advances by each step
    (TrainState.count_step). Stops after a whole optimiser step when `stop` asks for it."""
    from tqdm import tqdm

    model.train()
    device, distributed = settings.env.device, settings.env.distributed
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}/{state.planned_epochs}", disable=not settings.progress,
               leave=False, initial=state.step_in_epoch, total=state.step_in_epoch + len(loader))
    images_seen, data_wait = 0, 0.0
    fetch_started = time.perf_counter()
    for images, masks in bar:
        # Time blocked here is time the device sat idle (loss.item() below waits for each step).
        data_wait += time.perf_counter() - fetch_started
        images = normalize(images.to(device, non_blocking=True), settings.mean, settings.std)
        masks = masks.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        step, window, last_micro = accumulation_window(state.epoch, state.step_in_epoch, state.steps_per_epoch,
                                                       settings.grad_accum)
        lr = lr_at(step, state.total_steps, state.warmup_steps, settings.lr, settings.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Between optimiser steps DDP need not all-reduce gradients: forward and backward under no_sync.
        with model.no_sync() if distributed and not last_micro else nullcontext():
            with torch.autocast(device.type, dtype=settings.autocast_dtype, enabled=settings.autocast_dtype is not None):
                loss = compute_loss(model(images), masks, criterion, state.aux_weights)
            # All ranks take the same decisions (skip the step, stop for a signal), or they would deadlock.
            finite, keep_going = all_ranks_agree(
                [torch.isfinite(loss.detach()), torch.tensor(stop.signum is None, device=device)], settings.env)
            if finite:
                scaler.scale(loss / window).backward()  # (a disabled scaler returns the loss as it is)
        if not finite:
            if not settings.skip_nonfinite:
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at step {state.global_step + 1} (epoch {state.epoch + 1}, batch "
                    f"{state.step_in_epoch + 1}){' in one of the processes' if distributed else ''}: lower "
                    f"lr, check the data, or set skip_nonfinite true, then {resume_hint(state.run_dir)}")
            optimizer.zero_grad(set_to_none=True)
        elif last_micro:
            optimizer_step(optimizer, scaler)
        state.count_step(lr, loss.item() if finite else None)
        images_seen += images.shape[0]
        bar.set_postfix(loss=f"{state.epoch_losses[-1] if state.epoch_losses else float('nan'):.4f}", lr=f"{lr:.2e}")
        if not keep_going:
            stop.signum = stop.signum or signal.SIGTERM  # another rank got the signal
        # Stop after a whole optimiser step (nothing half-accumulated); at the epoch's last batch, only
        # after its validation and save (a checkpoint says "epoch N + 1, batch 0", never "batch N of N").
        if stop.signum is not None and last_micro and state.step_in_epoch < state.steps_per_epoch:
            return EpochResult(state.epoch_loss(), images_seen, data_wait, finished=False)
        fetch_started = time.perf_counter()
    return EpochResult(state.epoch_loss(), images_seen, data_wait, finished=True)


@torch.no_grad()
def evaluate(model, loader, num_classes: int, env: DistEnv, mean, std, criterion=None, amp: bool = True,
             progress: bool = False, amp_dtype: str = "auto") -> dict:
    """Full-size validation: confusion matrix (all-reduced across ranks) and mean loss."""
    from tqdm import tqdm

    model.eval()
    dtype, _ = autocast_settings(env.device, amp, amp_dtype)
    cm = ConfusionMatrix(num_classes, device=env.device)
    loss_sum, count = 0.0, 0
    for images, masks in tqdm(loader, desc="val", disable=not (progress and env.is_main), leave=False):
        images = normalize(images.to(env.device, non_blocking=True), mean, std)
        masks = masks.to(env.device, non_blocking=True)
        with torch.autocast(env.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        if criterion is not None:
            loss_sum += float(criterion(logits.float(), masks)) * images.shape[0]
            count += images.shape[0]
        cm.update(masks, logits.argmax(1))
    cm.all_reduce()
    scores = cm.compute()
    totals = torch.tensor([loss_sum, count], dtype=torch.float64, device=env.device)
    if env.distributed:
        torch.distributed.all_reduce(totals)
    scores["loss"] = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
    return scores


