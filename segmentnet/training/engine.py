"""Training: train(cfg) runs a whole training from a config (TrainSegmentNet.Config).

_train reads top to bottom on one screen: set_up (the data, the model, the optimiser and the
schedule, the run folder), then the epoch loop of train_one_epoch (loops.py), validate and
end_of_epoch (the record, the line printed, the checkpoints written atomically, the pictures). Its
pieces live with their meaning in this folder: optim.py (optimiser, schedule, precision), state.py
(TrainState: progress, plan, clock), resume.py (the checkpoint of a training), runs.py (the run
folder), data.py (the loaders).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.checkpoint import check_checkpoint, load_checkpoint, save_checkpoint
from ..core.config import is_number, is_whole
from ..core.description import ModelDescription
from ..core.distributed import (DistEnv, all_reduce_mean, broadcast_buffers, cleanup_distributed, setup_distributed,
                                unwrap)
from ..core.errors import ConfigError, DataError
from ..core.files import is_plain, write_text_atomic
from ..core.outputs import writing
from ..datasets import DATASETS
from ..models import MODELS, build_model, model_from_checkpoint, model_option_problems
from ..planning.plan import PLAN_FILE, plan_table, plan_training
from ..results.visualize import EpochPictures
from .data import DatasetFacts, build_loaders, read_dataset_json
from .loops import EpochResult, StepSettings, StopRequest, evaluate, out_of_memory_advice, train_one_epoch
from .losses import LOSSES, build_loss
from .optim import (AMP_DTYPES, CLASS_WEIGHTS, OPTIMIZERS, build_optimizer, class_weights_from_counts, compile_model,
                    make_scaler, optimizer_steps_per_epoch)
from .resume import check_resumable, model_description, restore, training_checkpoint
from .runs import METRICS, append_metrics, drop_metrics_after, prepare_run_dir, resume_hint
from .state import MAX_TIME_BUDGET, EpochPace, TrainState


def check_config(cfg) -> None:
    """Reject impossible hyperparameters before any work, naming the value and the fix."""
    problems = []

    def need(ok: bool, text: str):
        if not ok:
            problems.append(text)

    need(cfg.dataset in DATASETS or is_plain(cfg.dataset) and (Path(cfg.data_dir) / cfg.dataset / "dataset.json").is_file(),
         f"dataset {cfg.dataset!r} is unknown: not a built-in one ({', '.join(sorted(DATASETS))}) nor prepared in "
         f"{Path(cfg.data_dir) / cfg.dataset} (for your own images and masks: DataSeparate.py --dataset "
         f"{cfg.dataset} --images DIR --masks DIR)")
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
    need(0 <= cfg.time_budget <= MAX_TIME_BUDGET or math.isnan(cfg.time_budget),
         f"time_budget must be from 0 (no budget) to {MAX_TIME_BUDGET} minutes (ten years), got {cfg.time_budget}")
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




def train(cfg, given: dict | None = None) -> dict:
    """Run a whole training; returns a summary (run_dir, best and final validation scores).
    With cfg.auto, the settings not in `given` (those the user set) are planned first (planning/)."""
    check_config(cfg)
    env = setup_distributed(cfg.device)
    try:
        plan = None
        if cfg.auto:
            cfg, plan = plan_training(cfg, given or {}, env)
            check_config(cfg)
        with ExitStack() as held:  # the run folder's lock: released however the run ends
            return _train(cfg, env, held, plan)
    finally:
        cleanup_distributed()


@dataclass
class Run:
    """What a training works with, set up once (set_up) and used by every epoch."""
    cfg: object                     # the run's Config (TrainSegmentNet.Config)
    env: DistEnv
    facts: DatasetFacts             # of the dataset's dataset.json
    description: ModelDescription   # what the checkpoints tell inference of the model
    model: nn.Module                # the model checkpointed and validated
    train_model: nn.Module          # the one trained: the model, or DDP's or compile's wrapper of it
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: object           # data.ResumableSampler (set_epoch with a start)
    state: TrainState
    step: StepSettings              # train_one_epoch's settings
    pictures: EpochPictures | None  # curves.png and samples/epoch_NNN.png (main process)

    def checkpoint(self) -> dict:
        return training_checkpoint(self.model, self.optimizer, self.scaler, self.state, self.description)


def _train(cfg, env: DistEnv, held: ExitStack | None = None, plan=None) -> dict:
    clock_start = time.time()  # a time budget counts everything from here (and an auto run's planning)
    if plan is not None and not cfg.resume:
        clock_start -= plan.planning_seconds
    run = set_up(cfg, env, held, plan, clock_start)
    state, pace, scores = run.state, EpochPace(cfg.val_every), {}
    cycle_start = time.time()  # an epoch's pace: its training, and the saving after the epoch before
    with StopRequest() as stop:
        while state.epoch < state.planned_epochs:
            if stop.signum is not None:  # it came during validation or a save: last.pt is already current
                return stopped_by_signal(stop, state, env, scores)
            run.train_sampler.set_epoch(state.epoch, start=state.step_in_epoch * cfg.batch_size)
            started, first_batch = time.time(), state.step_in_epoch
            with out_of_memory_advice(cfg, state, "training", state.epoch + 1):
                epoch = train_one_epoch(run.train_model, run.train_loader, run.criterion, run.optimizer, run.scaler,
                                        state, run.step, stop)
            if not epoch.finished:
                if env.is_main:
                    save_checkpoint(run.checkpoint(), state.run_dir / "last.pt")
                return stopped_by_signal(stop, state, env, scores)
            seconds = time.time() - started
            state.finish_epoch()
            # (scaled up when this epoch was resumed part way)
            pace.add((time.time() - cycle_start) * state.steps_per_epoch / (state.steps_per_epoch - first_batch))
            state.epoch_seconds = pace.seconds()
            if cfg.time_budget > 0:  # refitted before validating, so that the last epoch validates
                state.fit_to_budget(cfg.time_budget, cfg.epochs, state.epoch_seconds, reserve=pace.val_seconds)
                state.share_plan(env)
            validating = state.epoch % cfg.val_every == 0 or state.epoch >= state.planned_epochs
            val_started = time.time()
            if validating:
                scores = validate(run)
            end_of_epoch(run, epoch, seconds, scores if validating else None)
            if validating:
                pace.val_seconds = time.time() - val_started  # validation, saving and pictures
            cycle_start = time.time() if validating else val_started
    if env.is_main:
        print(f"final val mIoU {scores.get('miou', float('nan')):.4f} (best {state.best_miou:.4f} at epoch "
              f"{state.best_epoch}); checkpoints: {state.run_dir / 'last.pt'}, {state.run_dir / 'best.pt'}")
    return {"run_dir": str(state.run_dir), "interrupted": None, **state.summary(scores)}


def set_up(cfg, env: DistEnv, held: ExitStack | None, plan, clock_start: float) -> Run:
    """The data, the model, the optimiser and the schedule, then the run folder (the last check:
    nothing is written before it) with config.json (and an auto run's plan.json)."""
    if env.distributed and cfg.sync_bn and env.device.type != "cuda":
        raise ConfigError("sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation (gloo); "
                          "set sync_bn false when training on CPUs")
    root = Path(cfg.data_dir) / cfg.dataset
    info = read_dataset_json(root)
    facts = DatasetFacts.from_info(info)
    resume_state = load_checkpoint(cfg.resume, map_location="cpu") if cfg.resume else None
    if resume_state is not None:
        check_checkpoint(resume_state, cfg.resume, resume=True)
        check_resumable(resume_state, cfg, facts.num_classes, cfg.resume)
    torch.manual_seed(cfg.seed)
    if resume_state is None:
        model = build_model(cfg.model, facts.num_classes, pretrained=True, **cfg.model_options)
    else:
        model = model_from_checkpoint(resume_state, cfg.resume)
    scaler = make_scaler(env.device, cfg.amp, cfg.amp_dtype)  # (a bf16 asked of a GPU without it stops here)
    train_loader, val_loader, train_sampler = build_loaders(cfg, env, root)
    cfg, model, train_model = place_model(cfg, env, model)
    criterion = build_loss(cfg.loss, ignore_index=info["ignore_index"],
                           weight=class_weights(cfg, info, root)).to(env.device)
    optimizer = build_optimizer(model, cfg)

    steps_per_epoch = len(train_loader)
    state = TrainState(steps_per_epoch=steps_per_epoch, grad_accum=cfg.grad_accum, lr=cfg.lr, clock_start=clock_start,
                       warmup_steps=int(optimizer_steps_per_epoch(steps_per_epoch, cfg.grad_accum) * cfg.warmup_epochs),
                       aux_weights={**getattr(unwrap(model), "aux_weights", {}), **cfg.aux_weights})
    state.plan_epochs(cfg.epochs)  # with a time budget, refitted after every epoch
    if resume_state is not None:
        restore(resume_state, cfg.resume, optimizer, scaler, state, cfg.optimizer, cfg.time_budget, cfg.epochs)
        if cfg.time_budget > 0:
            state.share_plan(env)

    folder = prepare_run_dir(cfg, env, resume_state, held)  # the last check: nothing is written before it
    state.run_dir, state.run_id = folder.path, folder.run_id
    pictures = None
    if env.is_main:
        if resume_state is not None:
            print(f"resuming {cfg.resume}: epoch {state.epoch + 1}, batch {state.step_in_epoch}")
            drop_metrics_after(folder.path / METRICS, state.epoch)
        write_run_files(folder, cfg, env, plan)
        print(f"training {cfg.model} on {cfg.dataset} ({len(train_loader.dataset)} train / "
              f"{len(val_loader.dataset)} val images) on {env.device}, {env.world_size} process(es), "
              f"{train_loader.num_workers} loader workers each; run folder {folder.path}")
        pictures = EpochPictures(folder.path, train_loader.dataset, val_loader.dataset, facts, cfg.tensorboard)
    return Run(cfg, env, facts, model_description(cfg, facts, folder.run_id), model, train_model, criterion,
               optimizer, scaler, train_loader, val_loader, train_sampler, state, StepSettings.of(cfg, env, facts),
               pictures)


def place_model(cfg, env: DistEnv, model: nn.Module):
    """(cfg, the model on the device, the model that trains: wrapped by DDP and compile when asked)."""
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
    return cfg, model, train_model


def class_weights(cfg, info: dict, root: Path):
    """The loss's class weights from the train split's pixel counts (None for class_weights none)."""
    counts = info["pixel_counts"].get("train")
    if cfg.class_weights != "none" and not (counts and sum(counts)):
        raise DataError(f"{root / 'dataset.json'} has no pixel counts of the train split, which class_weights "
                        f"{cfg.class_weights} needs: run DataSeparate.py again with --force, or set class_weights none")
    return class_weights_from_counts(counts, cfg.class_weights)


def write_run_files(folder, cfg, env: DistEnv, plan) -> None:
    """config.json (the settings, where the run is) and an auto run's plan.json, printed as a table."""
    run_dir = folder.path
    config = dataclasses.asdict(cfg) | {"run_dir": str(run_dir), "world_size": env.world_size,
                                        "run_id": folder.run_id, "forked_from": folder.forked_from}
    with writing(run_dir / "config.json", then=resume_hint(run_dir)):
        write_text_atomic(run_dir / "config.json", json.dumps(config, indent=1))
    if plan is not None:
        with writing(run_dir / PLAN_FILE, then=resume_hint(run_dir)):
            write_text_atomic(run_dir / PLAN_FILE, json.dumps(plan.as_dict(), indent=1))
        print(plan_table(plan))


def validate(run: Run) -> dict:
    """Full-size validation of the model checkpointed; the best score so far kept in the state."""
    broadcast_buffers(run.model, run.env)  # every rank validates rank 0's model, the one checkpointed
    with out_of_memory_advice(run.cfg, run.state, "validation", run.state.epoch):
        scores = evaluate(run.model, run.val_loader, run.facts.num_classes, run.env, run.facts.mean, run.facts.std,
                          run.criterion, run.cfg.amp, amp_dtype=run.cfg.amp_dtype)
    return scores


def end_of_epoch(run: Run, epoch: EpochResult, seconds: float, scores: dict | None) -> None:
    """After an epoch (scores: its validation's, or None): the record in metrics.jsonl, the line
    printed, last.pt (and best.pt when the score improved) and the pictures."""
    state, env = run.state, run.env
    train_loss = all_reduce_mean(epoch.loss, env)
    improved = scores is not None and scores["miou"] > state.best_miou
    if improved:
        state.best_miou, state.best_epoch = scores["miou"], state.epoch
    if not env.is_main:
        return
    run_dir = state.run_dir
    record = {"epoch": state.epoch, "train_loss": train_loss, "lr": state.lr,
              "epoch_seconds": seconds, "images_per_second": epoch.images * env.world_size / max(seconds, 1e-9),
              "nonfinite_steps": state.nonfinite_steps, "data_wait_fraction": epoch.data_wait_seconds / max(seconds, 1e-9),
              "elapsed_seconds": state.elapsed_seconds()}
    if scores is not None:  # metrics.jsonl holds the validated epochs
        record.update(val_loss=scores["loss"], val_miou=scores["miou"], val_pixel_acc=scores["pixel_acc"],
                      val_mean_class_acc=scores["mean_class_acc"], val_per_class_iou=scores["per_class_iou"])
        with writing(run_dir / METRICS, then=resume_hint(run_dir)):
            append_metrics(run_dir / METRICS, record)
    checkpoint = run.checkpoint()
    save_checkpoint(checkpoint, run_dir / "last.pt")
    if improved:
        save_checkpoint(checkpoint, run_dir / "best.pt")
    scores_text = (f"val loss {scores['loss']:.4f}, val mIoU {scores['miou']:.4f}, pixel acc {scores['pixel_acc']:.4f}, "
                   if scores is not None else "")
    print(f"epoch {state.epoch}/{state.planned_epochs}: train loss {train_loss:.4f}, {scores_text}"
          f"lr {state.lr:.2e}, {seconds:.1f}s")
    if scores is not None:
        with writing(run_dir / "samples", then=resume_hint(run_dir)):  # (and curves.png)
            run.pictures.write(run.model, state.epoch, record)


def stopped_by_signal(stop: StopRequest, state: TrainState, env: DistEnv, scores: dict) -> dict:
    last = state.run_dir / "last.pt"
    if env.is_main:
        print(f"stopped by signal {stop.signum} at epoch {state.epoch + 1}, batch {state.step_in_epoch}; "
              f"resumable checkpoint {last} (continue with --resume {last})", file=sys.stderr)
    return {"run_dir": str(state.run_dir), "interrupted": stop.signum, **state.summary(scores)}
