"""Training and evaluation: train(cfg) runs a whole training from a config (TrainSegmentNet.Config).

Read top to bottom: checks on the config, data, model, optimiser and schedule, then the epoch
loop of train_one_epoch and evaluate, with checkpoints written atomically after each epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import check_checkpoint, clean_state_dict, load_checkpoint, load_weights, save_checkpoint, writing
from .config import is_number, is_whole
from .data import EpochSampler, SegmentationDataset, collate_pairs, read_dataset_json
from .datasets import DATASETS
from .distributed import (DistEnv, all_ranks_agree, all_reduce_mean, broadcast_buffers, broadcast_from_main,
                          cleanup_distributed, setup_distributed, unwrap)
from .errors import ConfigError, DataError, NonFiniteLossError, SegmentNetError
from .files import write_text_atomic
from .losses import LOSSES, build_loss
from .metrics import ConfusionMatrix
from .models import MODELS, build_model, model_option_problems
from .models.legacy import LAST_RELEASE, upgrade
from .runs import METRICS, RunFolder, append_metrics, claim_run_folder, read_metrics, write_metrics
from .transforms import eval_transform, normalize, train_transform
from .visualize import EpochPictures

OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTS = ("none", "median_freq", "inverse_freq", "enet")


# ----------------------------------------------------------------------------- config checks


def check_config(cfg) -> None:
    """Reject impossible hyperparameters before any work, naming the value and the fix."""
    problems = []

    def need(ok: bool, text: str):
        if not ok:
            problems.append(text)

    need(cfg.dataset in DATASETS, f"dataset {cfg.dataset!r} is unknown; choices: {', '.join(sorted(DATASETS))}")
    need(cfg.model in MODELS, f"model {cfg.model!r} is unknown; choices: {', '.join(sorted(MODELS))}")
    need(cfg.loss in LOSSES, f"loss {cfg.loss!r} is unknown; choices: {', '.join(sorted(LOSSES))}")
    need(cfg.optimizer in OPTIMIZERS, f"optimizer {cfg.optimizer!r} is unknown; choices: {', '.join(OPTIMIZERS)}")
    need(cfg.class_weights in CLASS_WEIGHTS,
         f"class_weights {cfg.class_weights!r} is unknown; choices: {', '.join(CLASS_WEIGHTS)}")
    for f in dataclasses.fields(cfg):  # Infinity and NaN would pass range checks, then break the arithmetic
        value = getattr(cfg, f.name)
        need(f.name == "lr" or not isinstance(value, float) or math.isfinite(value),  # (lr: checked below)
             f"{f.name} must be a finite number, got {value}")
    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), f"lr must be a positive number, got {cfg.lr}")
    need(not cfg.weight_decay < 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(0 <= cfg.momentum < 1 or math.isnan(cfg.momentum), f"momentum must be in [0, 1), got {cfg.momentum}")
    need(not cfg.warmup_epochs < 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(not cfg.poly_power < 0, f"poly_power must be >= 0, got {cfg.poly_power}")
    need(cfg.crop_size >= 8, f"crop_size must be >= 8 pixels, got {cfg.crop_size}")
    need(not cfg.scale_min <= 0 and not cfg.scale_min > cfg.scale_max,
         f"need 0 < scale_min <= scale_max, got {cfg.scale_min}, {cfg.scale_max}")
    need(0 <= cfg.flip <= 1 or math.isnan(cfg.flip), f"flip is a probability in [0, 1], got {cfg.flip}")
    need(cfg.workers >= -1, f"workers must be >= 0 (or -1 for one per CPU core), got {cfg.workers}")
    need(cfg.amp_dtype in AMP_DTYPES, f"amp_dtype {cfg.amp_dtype!r} is unknown; choices: {', '.join(AMP_DTYPES)}")
    need(cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}")
    need(0 <= cfg.colour_jitter < 1, f"colour_jitter must be in [0, 1), got {cfg.colour_jitter}")
    need(is_whole(cfg.val_every, 1), f"val_every must be a whole number >= 1, got {cfg.val_every}")
    need(not cfg.time_budget < 0, f"time_budget must be >= 0 minutes (0: no budget), got {cfg.time_budget}")
    need(0 <= cfg.seed < 2 ** 32, f"seed must be from 0 to 2**32 - 1, got {cfg.seed}")
    need(cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
         f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    need(isinstance(cfg.model_options, dict), f"model_options must be a JSON object, got {cfg.model_options!r}")
    need(isinstance(cfg.aux_weights, dict) and all(
        is_number(w) and w >= 0 for w in cfg.aux_weights.values()),
         f"aux_weights must be a JSON object of numbers >= 0, got {cfg.aux_weights!r}")
    if cfg.model in MODELS and isinstance(cfg.model_options, dict):
        problems += model_option_problems(cfg.model, cfg.model_options)
    if problems:
        raise ConfigError("impossible hyperparameters:\n  " + "\n  ".join(problems))


def check_crop_fits(dataset: SegmentationDataset, cfg) -> None:
    """With padding off, every image scaled by scale_min must still hold a crop."""
    if cfg.pad:
        return
    from PIL import Image

    for path in dataset.images:
        with Image.open(path) as im:
            w, h = im.size
        if min(w, h) * cfg.scale_min < cfg.crop_size:
            raise ConfigError(f"crop_size {cfg.crop_size} is larger than {path} ({w}x{h}) scaled by scale_min "
                              f"{cfg.scale_min}, and pad is off: lower crop_size, raise scale_min or set pad true")


# ----------------------------------------------------------------------------- pieces


def class_weights_from_counts(counts: list[int], rule: str) -> torch.Tensor | None:
    """median_freq: median(f) / f_c (Eigen and Fergus); inverse_freq: 1 / f_c, scaled to mean 1;
    enet: 1 / ln(1.02 + f_c) (Paszke et al., ENet), which bounds the weights (at most ~50) and spreads
    them less than median_freq (on CamVid 13x from the most to the least frequent class, against 110x).

    Classes with no pixels get weight 0 (nothing to learn from them).
    """
    if rule == "none":
        return None
    counts_t = torch.tensor(counts, dtype=torch.float64)
    present = counts_t > 0
    freq = counts_t / counts_t.sum()
    weights = torch.zeros_like(freq)
    if rule == "median_freq":
        # quantile, not median(): with an even number of classes torch's median is the lower middle value
        weights[present] = freq[present].quantile(0.5) / freq[present]
    elif rule == "enet":
        weights[present] = 1 / torch.log(1.02 + freq[present])
    else:
        weights[present] = 1 / freq[present]
        weights[present] /= weights[present].mean()
    return weights.float()


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, power: float) -> float:
    """Linear warmup from 0, then polynomial decay to 0."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * max(0.0, 1 - progress) ** power


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    # No weight decay on biases and norm layers, as is usual for segmentation networks.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


AMP_DTYPES = ("auto", "bfloat16", "float16")


def autocast_settings(device: torch.device, amp: bool, amp_dtype: str = "auto"):
    """(dtype or None, needs GradScaler).

    auto: bf16 on GPUs that have it, else fp16 with a gradient scaler; off on CPUs (slower there on
    most). bfloat16 or float16 force that autocast on any device (float16 always with a scaler).
    """
    if not amp or (amp_dtype == "auto" and device.type != "cuda"):
        return None, False
    if amp_dtype == "auto":
        amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if amp_dtype == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"amp_dtype bfloat16: {torch.cuda.get_device_name(device)} does not support bf16; "
                              f"set amp_dtype auto or float16")
        return torch.bfloat16, False
    return torch.float16, True


def make_scaler(device: torch.device, amp: bool, amp_dtype: str = "auto"):
    """The gradient scaler fp16 needs (small gradients would flush to zero), or None."""
    return torch.amp.GradScaler(device.type) if autocast_settings(device, amp, amp_dtype)[1] else None


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile; on CPUs with inductor's NHWC layout choice off.

    That choice reaches a oneDNN crash (segfault; torch 2.11 and 2.13 on CPUs) in the backward of strided 1x1
    convolutions with few channels, e.g. the residual UNet at width 8.
    """
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    return torch.compile(model)


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


def optimizer_steps_per_epoch(steps_per_epoch: int, accum: int) -> int:
    """Accumulation windows never span two epochs: the last one of an epoch may hold fewer batches."""
    return -(-steps_per_epoch // accum)


def accumulation_window(epoch: int, step_in_epoch: int, steps_per_epoch: int, accum: int) -> tuple[int, int, bool]:
    """For a batch: (the optimiser step it counts towards, from the run's start; the number of batches
    of its window, by which its loss is divided; whether it is the window's last, which steps).

    Windows restart with each epoch, so that an epoch ends with nothing half-accumulated: its last
    window steps on the batches left (all of them when grad_accum exceeds an epoch's batches), and a
    checkpoint at an epoch's end holds every gradient taken.
    """
    start = step_in_epoch // accum * accum
    window = min(accum, steps_per_epoch - start)
    step = epoch * optimizer_steps_per_epoch(steps_per_epoch, accum) + step_in_epoch // accum
    return step, window, step_in_epoch + 1 == start + window


def optimizer_step(optimizer: torch.optim.Optimizer, scaler) -> None:
    """Step (through the gradient scaler, when there is one) and clear the gradients."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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


def ignore_ctrl_c(worker_id: int) -> None:
    """Loader worker init: Ctrl-C in a terminal reaches every process of the group, and a worker that
    died of it would break the main process's orderly stop. (SIGTERM stays: it is how the loader and
    multiprocessing end their workers.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def out_of_memory_advice(cfg, run, during: str, epoch: int):
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
            f"out of GPU memory during {during} in epoch {epoch}, after {run['global_step']} steps: "
            f"{str(exc).splitlines()[0]}\nTo need less memory: {'; '.join(settings)}. Validation runs whole images "
            f"one at a time, so there only amp or a smaller model helps. Change them, "
            f"then {resume_hint(run.get('run_dir'))}") from exc


# ----------------------------------------------------------------------------- the two loops


def train_one_epoch(model, loader, criterion, optimizer, scaler, run, cfg, env: DistEnv, stop: StopRequest):
    """One pass over the training data. Returns (mean loss, images seen, finished: bool)."""
    from tqdm import tqdm

    model.train()
    device = env.device
    dtype, _ = autocast_settings(device, cfg.amp, cfg.amp_dtype)
    losses, seen = run.setdefault("epoch_losses", []), 0  # carried in the checkpoint across a stop
    bar = tqdm(loader, desc=f"epoch {run['epoch'] + 1}/{run['planned_epochs']}", disable=not env.is_main or not cfg.progress,
               leave=False, initial=run["step_in_epoch"], total=run["step_in_epoch"] + len(loader))
    accum = cfg.grad_accum
    steps_per_epoch = run.get("steps_per_epoch") or run["step_in_epoch"] + len(loader)
    fetch_started = time.perf_counter()
    for images, masks in bar:
        # Time blocked here is time the device sat idle (loss.item() below waits for each step).
        run["data_wait_seconds"] = run.get("data_wait_seconds", 0.0) + time.perf_counter() - fetch_started
        images = normalize(images.to(device, non_blocking=True), run["mean"], run["std"])
        masks = masks.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        step, window, last_micro = accumulation_window(run["epoch"], run["step_in_epoch"], steps_per_epoch, accum)
        lr = lr_at(step, run["total_steps"], run["warmup_steps"], cfg.lr, cfg.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Between optimiser steps DDP need not all-reduce gradients: forward and backward under no_sync.
        with model.no_sync() if env.distributed and not last_micro else nullcontext():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = compute_loss(model(images), masks, criterion, run["aux_weights"])
            # All ranks take the same decisions (skip the step, stop for a signal), or they would deadlock.
            finite, keep_going = all_ranks_agree(
                [torch.isfinite(loss.detach()), torch.tensor(stop.signum is None, device=device)], env)
            if finite:
                (scaler.scale(loss / window) if scaler else loss / window).backward()
        if not finite:
            run["nonfinite_steps"] += 1
            if not cfg.skip_nonfinite:
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at step {run['global_step'] + 1} (epoch {run['epoch'] + 1}, batch "
                    f"{run['step_in_epoch'] + 1}){' in one of the processes' if env.distributed else ''}: lower lr, "
                    f"check the data, or set skip_nonfinite true, then {resume_hint(run.get('run_dir'))}")
            optimizer.zero_grad(set_to_none=True)
        else:
            if last_micro:
                optimizer_step(optimizer, scaler)
            losses.append(loss.item())
        seen += images.shape[0]
        run["global_step"] += 1
        run["step_in_epoch"] += 1
        run["lr"] = lr
        bar.set_postfix(loss=f"{losses[-1] if losses else float('nan'):.4f}", lr=f"{lr:.2e}")
        if not keep_going:
            stop.signum = stop.signum or signal.SIGTERM  # another rank got the signal
        # Stop after a whole optimiser step (nothing half-accumulated); at the epoch's last batch, only
        # after its validation and save (a checkpoint says "epoch N + 1, batch 0", never "batch N of N").
        if stop.signum is not None and last_micro and run["step_in_epoch"] < steps_per_epoch:
            return float(np.mean(losses)) if losses else float("nan"), seen, False
        fetch_started = time.perf_counter()
    return float(np.mean(losses)) if losses else float("nan"), seen, True


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


# ----------------------------------------------------------------------------- the run


def prepare_run_dir(cfg, env: DistEnv, resume_state: dict | None = None, held: ExitStack | None = None):
    """The run folder, claimed for this run (runs.claim_run_folder): a new run, the continuation of
    the resumed checkpoint's run, or a fork of it into a new folder; never another run's folder.

    Rank 0 names, checks, locks and marks it and tells the others (the default name holds the time),
    so that all agree and stop together. Returns the RunFolder: on rank 0 with the lock, released
    when `held` closes (without `held`, when the process ends); the other ranks write nothing.
    """
    folder, problem = None, None
    out = Path(cfg.out) if cfg.out else (Path(cfg.resume).parent if cfg.resume else
                                         Path("runs") / f"{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if env.is_main:
        try:
            folder = claim_run_folder(out, Path(cfg.resume) if cfg.resume else None, resume_state, cfg.resume_older)
        except SegmentNetError as exc:
            problem = exc
        else:
            if held is not None:
                held.callback(folder.lock.release)
            for note in folder.notes:
                print(note)
    out, run_id, problem = broadcast_from_main((out, folder.run_id if folder else None, problem), env)
    if problem:
        raise problem
    return folder if env.is_main else RunFolder(out, run_id)


def resume_hint(run_dir) -> str:
    """How to go on after a run stopped with an error: from its last.pt, or, before its first
    checkpoint, by running again (the folder, holding no checkpoint, is then reused)."""
    last = Path(run_dir) / "last.pt" if run_dir else None
    if last is None:
        return "continue from the last finished epoch with --resume <run folder>/last.pt"
    if last.is_file():
        return f"continue from the last finished epoch with --resume {last}"
    return (f"run the same command again: the run folder {run_dir} holds no checkpoint yet, so a new run starts "
            f"over in it (or remove the folder)")


def loader_workers(requested: int) -> int:
    """-1: the CPU cores this process may use, shared with the other training processes of the node
    (torchrun's LOCAL_WORLD_SIZE), at most 8 (more rarely helps, and each holds prefetched batches)."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def build_loaders(cfg, env: DistEnv, root: Path):
    train_set = SegmentationDataset(root, "train", train_transform(cfg.crop_size, (cfg.scale_min, cfg.scale_max),
                                                                   cfg.flip, cfg.pad, cfg.colour_jitter), seed=cfg.seed,
                                    require_masks=True)
    val_set = SegmentationDataset(root, "val", eval_transform(), seed=cfg.seed, require_masks=True)
    check_crop_fits(train_set, cfg)
    train_sampler = EpochSampler(len(train_set), cfg.seed, shuffle=True, rank=env.rank, world_size=env.world_size,
                                 drop_last=True)
    val_sampler = EpochSampler(len(val_set), shuffle=False, rank=env.rank, world_size=env.world_size, pad=False)
    if len(train_sampler) < cfg.batch_size:
        raise ConfigError(f"the train split has {len(train_set)} images, fewer than one batch of {cfg.batch_size} "
                          f"per process: lower batch_size")
    pin = env.device.type == "cuda"
    workers = loader_workers(cfg.workers)
    common = dict(num_workers=workers, pin_memory=pin, collate_fn=collate_pairs, persistent_workers=workers > 0)
    if workers > 0:
        common["prefetch_factor"] = 4
        common["worker_init_fn"] = ignore_ctrl_c
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=train_sampler, drop_last=True, **common)
    val_loader = DataLoader(val_set, batch_size=1, sampler=val_sampler, **common)
    return train_loader, val_loader, train_sampler


def checkpoint_state(model, optimizer, scaler, run, cfg) -> dict:
    return {
        "model": unwrap(model).state_dict(),
        "run_id": run["run_id"],
        "model_name": cfg.model,
        "model_options": dict(cfg.model_options),
        "num_classes": run["num_classes"],
        "classes": list(run["classes"]),
        "palette": [list(c) for c in run["palette"]],
        "mean": list(run["mean"]),
        "std": list(run["std"]),
        "ignore_index": 255,
        "dataset": cfg.dataset,
        "config": dataclasses.asdict(cfg),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"global_step": run["global_step"], "total_steps": run["total_steps"],
                      "warmup_steps": run["warmup_steps"], "planned_epochs": run["planned_epochs"],
                      "elapsed_seconds": elapsed_seconds(run), "epoch_seconds": run["epoch_seconds"]},
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": run["epoch"],                   # the epoch in progress (0-based)
        "step_in_epoch": run["step_in_epoch"],   # batches of it already done (0 at an epoch's start)
        "best_miou": run["best_miou"],
        "best_epoch": run["best_epoch"],
        "nonfinite_steps": run["nonfinite_steps"],
        "epoch_losses": list(run.get("epoch_losses", [])),  # train losses of the epoch's steps done so far
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def check_compatible(state: dict, cfg, num_classes: int, path) -> None:
    problems = []
    if state.get("model_name") != cfg.model:
        problems.append(f"it is a {state.get('model_name')!r} model, this run trains {cfg.model!r}")
    if state.get("num_classes") != num_classes:
        problems.append(f"it has {state.get('num_classes')} classes, the dataset {cfg.dataset!r} has {num_classes}")
    if state.get("model_options", {}) != dict(cfg.model_options):
        problems.append(f"its model_options are {state.get('model_options')}, this run's are {cfg.model_options}")
    if state.get("dataset", cfg.dataset) != cfg.dataset:
        problems.append(f"it was trained on {state.get('dataset')!r}, this run uses {cfg.dataset!r}")
    trained_batch = state.get("config", {}).get("batch_size", cfg.batch_size)
    if state.get("step_in_epoch") and trained_batch != cfg.batch_size:
        problems.append(f"it stopped inside an epoch with batch_size {trained_batch}, this run's is "
                        f"{cfg.batch_size} (the batches already done would not line up)")
    if problems:
        raise DataError(f"checkpoint {path} does not fit this run: " + "; ".join(problems) +
                        ". Resume with the settings it was trained with (see its config.json), or start a new run.")


def check_resumable(state: dict, cfg, path) -> None:
    """A checkpoint's values that its types (checkpoint.check_checkpoint) let through but this run cannot
    continue from."""
    trained_with = state["config"].get("optimizer", cfg.optimizer)
    if trained_with != cfg.optimizer:
        raise DataError(f"checkpoint {path} does not fit this run: it was trained with optimizer {trained_with!r}, "
                        f"this run uses {cfg.optimizer!r} (their states differ). Resume with the settings it was "
                        f"trained with (see its config.json), or start a new run.")


OPTIMIZER_STATE = {"adamw": ("step", "exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}


def restore_training_state(state: dict, path, optimizer, scaler, run: dict, cfg) -> None:
    """Put a checkpoint's optimiser, scaler, schedule position and random states back; DataError
    naming the entry when one does not fit this run (check_checkpoint has checked their types)."""
    if state["step_in_epoch"] >= run["steps_per_epoch"]:
        raise DataError(f"checkpoint {path} stopped after batch {state['step_in_epoch']} of an epoch, but an epoch of "
                        f"this run has {run['steps_per_epoch']} batches (another train split, batch_size or number "
                        f"of processes?): resume with the settings it was trained with, or start a new run")
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise DataError(f"checkpoint {path}: its optimizer state does not fit this model "
                        f"({str(exc).splitlines()[0]}); use another copy (last.pt or best.pt) or start a new run") from None
    problems = []
    for group, before in zip(optimizer.param_groups, fresh):
        problems += [f"param_groups {key} is {group.get(key)!r}" for key, value in before.items()
                     if not _same_kind(group.get(key), value)]
        for param in group["params"]:
            entries = optimizer.state.get(param, {})
            if entries and any(key not in entries for key in OPTIMIZER_STATE[cfg.optimizer]):
                problems.append(f"a parameter's state has {sorted(entries)}, not {list(OPTIMIZER_STATE[cfg.optimizer])}")
            problems += [f"{key} of a parameter of shape {tuple(param.shape)} has shape {tuple(value.shape)}"
                         for key, value in entries.items()
                         if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape]
            problems += [f"{key} of a parameter is {type(value).__name__}, not a tensor" for key, value in entries.items()
                         if key in OPTIMIZER_STATE[cfg.optimizer] and not isinstance(value, (torch.Tensor, type(None)))]
    if problems:
        raise DataError(f"checkpoint {path}: its optimizer state is damaged: {'; '.join(sorted(set(problems))[:5])}. "
                        f"Use another copy (last.pt or best.pt) or start a new run")
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    for key in ("epoch", "step_in_epoch", "best_miou", "best_epoch", "nonfinite_steps"):
        run[key] = state[key]
    run["epoch_losses"] = list(state["epoch_losses"])
    run["global_step"] = state["scheduler"]["global_step"]
    if cfg.time_budget > 0:  # (an older checkpoint, without these: the budget counts from now)
        elapsed, pace = (state["scheduler"].get(k, 0.0) for k in ("elapsed_seconds", "epoch_seconds"))
        if not (is_number(elapsed) and elapsed >= 0 and is_number(pace) and pace >= 0):
            raise DataError(f"checkpoint {path}: its scheduler's elapsed_seconds {elapsed!r} or epoch_seconds "
                            f"{pace!r} is not a number of seconds; use another copy (last.pt or best.pt) or start "
                            f"a new run")
        run["elapsed_before"], run["epoch_seconds"] = float(elapsed), float(pace)
        if pace:  # the pace of the last epoch: the epochs that this run's budget still holds
            fit_to_budget(run, cfg, pace)
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


def train(cfg) -> dict:
    """Run a whole training; returns a summary (run_dir, best and final validation scores)."""
    check_config(cfg)
    env = setup_distributed(cfg.device)
    try:
        with ExitStack() as held:  # the run folder's lock: released however the run ends
            return _train(cfg, env, held)
    finally:
        cleanup_distributed()


def elapsed_seconds(run: dict) -> float:
    """Wall-clock seconds of the whole training so far, validation included, across resumes."""
    return run["elapsed_before"] + time.time() - run["clock_start"]


def plan_epochs(run: dict, epochs: int) -> None:
    """Fit the learning-rate schedule to `epochs` epochs (it decays to 0 at the end of the last)."""
    run["planned_epochs"] = epochs
    run["total_steps"] = optimizer_steps_per_epoch(run["steps_per_epoch"], run["grad_accum"]) * epochs


def fit_to_budget(run: dict, cfg, epoch_seconds: float, reserve: float = 0.0) -> None:
    """With a time budget: as many more epochs as the minutes left hold at the recent pace
    (training, validation and saving), at most `epochs` in all, and the schedule fitted to them.
    `reserve` seconds are kept for the validation that ends the last epoch."""
    left = cfg.time_budget * 60 - elapsed_seconds(run) - reserve
    more = max(0, int(left // (epoch_seconds * BUDGET_MARGIN)))
    plan_epochs(run, min(cfg.epochs, run["epoch"] + more))
    run["warmup_steps"] = min(run["warmup_steps"], run["total_steps"] // 2)  # a short plan still decays


def share_plan(run: dict, env: DistEnv) -> None:
    """Every process follows rank 0's plan: each one's clock differs a little, and a process that
    planned one epoch fewer would leave the others waiting for it for ever."""
    plan_epochs(run, broadcast_from_main(run["planned_epochs"], env))
    run["warmup_steps"] = broadcast_from_main(run["warmup_steps"], env)


BUDGET_MARGIN = 1.03  # an epoch may run a little slower than the recent ones; the budget is a promise
PACE_EPOCHS = 4  # the pace is the mean of this many epochs: single epochs vary by ~10 %, which made the plan jitter


class EpochPace:
    """Seconds per epoch, for fitting the plan to a time budget: the mean of the last PACE_EPOCHS
    epochs' training (and saving), plus the last validation's cost spread over `val_every` epochs."""

    def __init__(self, val_every: int):
        self.val_every, self.recent, self.val_seconds = val_every, [], 0.0

    def add(self, seconds: float) -> None:
        self.recent = (self.recent + [seconds])[-PACE_EPOCHS:]

    def seconds(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1) + self.val_seconds / self.val_every


def _train(cfg, env: DistEnv, held: ExitStack | None = None) -> dict:
    clock_start = time.time()  # a time budget counts everything from here
    if env.distributed and cfg.sync_bn and env.device.type != "cuda":
        raise ConfigError("sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation (gloo); "
                          "set sync_bn false when training on CPUs")
    root = Path(cfg.data_dir) / cfg.dataset
    info = read_dataset_json(root)
    num_classes = info["num_classes"]
    resume_state = load_checkpoint(cfg.resume, map_location="cpu") if cfg.resume else None
    if resume_state is not None:
        check_checkpoint(resume_state, cfg.resume, resume=True)
        cleaned = clean_state_dict(resume_state["model"])
        _, weights = upgrade(resume_state["model_name"], resume_state["model_options"], cleaned, cfg.resume)
        if weights is not cleaned:
            raise DataError(f"checkpoint {cfg.resume} was written by release {LAST_RELEASE} or before, whose "
                            f"models this release rebuilds on torchvision: Evaluate.py and Predict.py read it, "
                            f"but resuming its training needs that release (git checkout {LAST_RELEASE})")
        check_compatible(resume_state, cfg, num_classes, cfg.resume)
        check_resumable(resume_state, cfg, cfg.resume)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes, pretrained=resume_state is None, **cfg.model_options)
    if resume_state is not None:
        load_weights(model, resume_state["model"], cfg.resume)
    scaler = make_scaler(env.device, cfg.amp, cfg.amp_dtype)  # (a bf16 asked of a GPU without it stops here)
    train_loader, val_loader, train_sampler = build_loaders(cfg, env, root)

    if cfg.channels_last and env.device.type != "cuda":
        if env.is_main:
            print("warning: channels_last is ignored on CPUs: torch's oneDNN crashes (segfault) there in the "
                  "backward of NHWC stride-2 1x1 convolutions with few channels, and its gain is on tensor-core "
                  "GPUs (0.8-1.8x by model on a CPU, bench/RESULTS.md)", file=sys.stderr)
        cfg = dataclasses.replace(cfg, channels_last=False)
    model.to(env.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if env.distributed and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    train_model = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if cfg.compile:
        train_model = compile_model(train_model, env.device)

    counts = info["pixel_counts"].get("train")
    if cfg.class_weights != "none" and not (counts and sum(counts)):
        raise DataError(f"{root / 'dataset.json'} has no pixel counts of the train split, which class_weights "
                        f"{cfg.class_weights} needs: run DataSeparate.py again with --force, or set class_weights none")
    weights = class_weights_from_counts(counts, cfg.class_weights)
    criterion = build_loss(cfg.loss, ignore_index=info["ignore_index"], weight=weights).to(env.device)
    optimizer = build_optimizer(model, cfg)

    steps_per_epoch = len(train_loader)
    run = {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_miou": -1.0, "best_epoch": -1,
        "nonfinite_steps": 0, "lr": cfg.lr, "num_classes": num_classes, "classes": info["classes"],
        "palette": info["palette"], "mean": info["mean"], "std": info["std"],
        "steps_per_epoch": steps_per_epoch, "grad_accum": cfg.grad_accum,
        "clock_start": clock_start, "elapsed_before": 0.0, "epoch_seconds": 0.0,
        "warmup_steps": int(optimizer_steps_per_epoch(steps_per_epoch, cfg.grad_accum) * cfg.warmup_epochs),
        "aux_weights": {**getattr(unwrap(model), "aux_weights", {}), **cfg.aux_weights},
    }
    plan_epochs(run, cfg.epochs)  # with a time budget, refitted after every epoch
    if resume_state is not None:
        restore_training_state(resume_state, cfg.resume, optimizer, scaler, run, cfg)
        if cfg.time_budget > 0:
            share_plan(run, env)

    folder = prepare_run_dir(cfg, env, resume_state, held)  # the last check: nothing is written before it
    run_dir = run["run_dir"] = folder.path
    run["run_id"] = folder.run_id
    if env.is_main and resume_state is not None:
        print(f"resuming {cfg.resume}: epoch {run['epoch'] + 1}, batch {run['step_in_epoch']}")
        drop_metrics_after(run_dir / METRICS, run["epoch"])
    if env.is_main:
        config = dataclasses.asdict(cfg) | {"run_dir": str(run_dir), "world_size": env.world_size,
                                            "run_id": folder.run_id, "forked_from": folder.forked_from}
        with writing(run_dir / "config.json", then=resume_hint(run_dir)):
            write_text_atomic(run_dir / "config.json", json.dumps(config, indent=1))
        print(f"training {cfg.model} on {cfg.dataset} ({len(train_loader.dataset)} train / "
              f"{len(val_loader.dataset)} val images) on {env.device}, {env.world_size} process(es), "
              f"{train_loader.num_workers} loader workers each; run folder {run_dir}")

    last_scores: dict = {}
    if env.is_main:  # curves.png and samples/epoch_NNN.png after every epoch
        pictures = EpochPictures(run_dir, train_loader.dataset, val_loader.dataset, run, cfg.tensorboard)
    pace = EpochPace(cfg.val_every)
    cycle_start = time.time()  # an epoch's pace: its training, and the saving after the epoch before
    with StopRequest() as stop:
        while run["epoch"] < run["planned_epochs"]:
            if stop.signum is not None:  # it came during validation or a save: last.pt is already current
                return stopped_by_signal(stop, run, run_dir, env, last_scores)
            train_sampler.set_epoch(run["epoch"], start=run["step_in_epoch"] * cfg.batch_size)
            started, run["data_wait_seconds"], first_batch = time.time(), 0.0, run["step_in_epoch"]
            with out_of_memory_advice(cfg, run, "training", run["epoch"] + 1):
                train_loss, seen, finished = train_one_epoch(train_model, train_loader, criterion, optimizer,
                                                             scaler, run, cfg, env, stop)
            if not finished:
                if env.is_main:
                    save_checkpoint(checkpoint_state(model, optimizer, scaler, run, cfg), run_dir / "last.pt")
                return stopped_by_signal(stop, run, run_dir, env, last_scores)
            elapsed = time.time() - started
            train_loss = all_reduce_mean(train_loss, env)
            run["epoch"] += 1
            run["step_in_epoch"] = 0
            run["epoch_losses"] = []
            # (scaled up when this epoch was resumed part way)
            pace.add((time.time() - cycle_start) * steps_per_epoch / (steps_per_epoch - first_batch))
            run["epoch_seconds"] = pace.seconds()
            if cfg.time_budget > 0:  # refitted before validating, so that the last epoch validates
                fit_to_budget(run, cfg, run["epoch_seconds"], reserve=pace.val_seconds)
                share_plan(run, env)
            validating = run["epoch"] % cfg.val_every == 0 or run["epoch"] >= run["planned_epochs"]
            val_started = time.time()
            if validating:
                broadcast_buffers(model, env)  # every rank validates rank 0's model, the one checkpointed
                with out_of_memory_advice(cfg, run, "validation", run["epoch"]):
                    last_scores = evaluate(model, val_loader, num_classes, env, run["mean"], run["std"], criterion,
                                           cfg.amp, amp_dtype=cfg.amp_dtype)
            improved = validating and last_scores["miou"] > run["best_miou"]
            if improved:
                run["best_miou"], run["best_epoch"] = last_scores["miou"], run["epoch"]
            if env.is_main:
                record = {"epoch": run["epoch"], "train_loss": train_loss, "lr": run["lr"], "epoch_seconds": elapsed,
                          "images_per_second": seen * env.world_size / max(elapsed, 1e-9),
                          "nonfinite_steps": run["nonfinite_steps"],
                          "data_wait_fraction": run["data_wait_seconds"] / max(elapsed, 1e-9),
                          "elapsed_seconds": elapsed_seconds(run)}
                if validating:  # metrics.jsonl holds the validated epochs
                    record.update(val_loss=last_scores["loss"], val_miou=last_scores["miou"],
                                  val_pixel_acc=last_scores["pixel_acc"],
                                  val_mean_class_acc=last_scores["mean_class_acc"],
                                  val_per_class_iou=last_scores["per_class_iou"])
                    with writing(run_dir / METRICS, then=resume_hint(run_dir)):
                        append_metrics(run_dir / METRICS, record)
                state = checkpoint_state(model, optimizer, scaler, run, cfg)
                save_checkpoint(state, run_dir / "last.pt")
                if improved:
                    save_checkpoint(state, run_dir / "best.pt")
                scores_text = (f"val loss {last_scores['loss']:.4f}, val mIoU {last_scores['miou']:.4f}, "
                               f"pixel acc {last_scores['pixel_acc']:.4f}, " if validating else "")
                print(f"epoch {run['epoch']}/{run['planned_epochs']}: train loss {train_loss:.4f}, {scores_text}"
                      f"lr {run['lr']:.2e}, {elapsed:.1f}s")
                if validating:
                    with writing(run_dir / "samples", then=resume_hint(run_dir)):  # (and curves.png)
                        pictures.write(model, run["epoch"], record)
            if validating:
                pace.val_seconds = time.time() - val_started  # validation, saving and pictures
            cycle_start = time.time() if validating else val_started
    if env.is_main:
        print(f"final val mIoU {last_scores.get('miou', float('nan')):.4f} (best {run['best_miou']:.4f} at epoch "
              f"{run['best_epoch']}); checkpoints: {run_dir / 'last.pt'}, {run_dir / 'best.pt'}")
    return {"run_dir": str(run_dir), "interrupted": None, **run_summary(run, last_scores)}


def stopped_by_signal(stop: StopRequest, run: dict, run_dir: Path, env: DistEnv, scores: dict) -> dict:
    if env.is_main:
        print(f"stopped by signal {stop.signum} at epoch {run['epoch'] + 1}, batch {run['step_in_epoch']}; "
              f"resumable checkpoint {run_dir / 'last.pt'} (continue with --resume {run_dir / 'last.pt'})",
              file=sys.stderr)
    return {"run_dir": str(run_dir), "interrupted": stop.signum, **run_summary(run, scores)}


def drop_metrics_after(path: Path, epoch: int) -> None:
    """On resume, forget records of epochs the checkpoint does not include (a crash between the two
    writes, or --resume-older), and any line cut short (a crash while appending)."""
    if path.exists():
        write_metrics(path, [record for record in read_metrics(path) if record["epoch"] <= epoch])


def run_summary(run: dict, scores: dict) -> dict:
    return {"epoch": run["epoch"], "best_miou": run["best_miou"], "best_epoch": run["best_epoch"],
            "final_scores": scores, "nonfinite_steps": run["nonfinite_steps"]}
