"""Self-configuring training (`--auto true`): a plan of the settings from the dataset's fingerprint,
this machine's measured speeds and the time budget, as nnU-Net derives its configuration by rules.

plan_training(cfg, given, env) -> (cfg with the plan's settings, Plan). Settings in `given` (the
command line and config file) win; every other one the rules (rules.py) choose, each with its reason.
The plan is written to the run folder as plan.json and printed as a table; a resumed auto run keeps
its plan (the settings its checkpoint was trained with), measuring nothing again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ..core.checkpoint import check_checkpoint, load_checkpoint
from ..core.config import config_from_dict, is_number
from ..core.distributed import DistEnv, broadcast_from_main
from ..core.errors import ConfigError, DataError, SegmentNetError
from ..core.files import read_json
from ..training.data import SegmentationDataset, loader_workers, read_dataset_json
from ..training.transforms import train_transform
from .fingerprint import measure_dataset
from .machine import describe, inference_seconds, loader_speed, loss_seconds, step_speed
from .rules import (DEFAULT_BUDGET, PLAN_FILE, REFERENCE_CROP, VAL_SHARE, Choice, Plan, batch_rule, choice_rows,
                    class_weight_rule, crop_budget_rule, crop_rule, loss_rule, model_ladder, model_rule, precision_rule,
                    scale_rule, schedule_rule, workers_rule)

# What a plan decides: on resume these come from the checkpoint's config unless given again.
PLANNED = ("time_budget", "crop_size", "scale_min", "scale_max", "colour_jitter", "class_weights", "loss", "amp",
           "amp_dtype", "channels_last", "batch_size", "lr", "workers", "model", "model_options", "epochs",
           "val_every", "warmup_epochs")


def plan_training(cfg, given: dict, env: DistEnv):
    """The plan (made on the first process, shared with the others) and cfg with its settings. A plan
    that fails fails on every process (the others would otherwise wait for it)."""
    plan, error = None, None
    if env.is_main:
        try:
            plan = resumed_plan(cfg, given) if cfg.resume else make_plan(cfg, given, env)
        except Exception as exc:  # (re-raised below, on every process)
            error = exc
    plan, failure = broadcast_from_main((plan, None if error is None else (type(error), str(error))), env)
    if error is not None:
        raise error
    if failure is not None:
        kind, text = failure
        raise (kind if issubclass(kind, SegmentNetError) else SegmentNetError)(f"the plan failed on the first process: {text}")
    # A resumed plan applies what it kept (its record may hold anything); a given setting always stays.
    settings = plan.choices[-1].settings if cfg.resume else plan.settings()
    return dataclasses.replace(cfg, **{k: v for k, v in settings.items() if k not in given}), plan


def make_plan(cfg, given: dict, env: DistEnv) -> Plan:
    started = time.time()
    root = Path(cfg.data_dir) / cfg.dataset
    info = read_dataset_json(root)
    SegmentationDataset(root, "val", require_masks=True)  # (a missing split fails now, not after the measuring)
    if "time_budget" in given and not cfg.time_budget > 0:
        raise ConfigError(f"auto plans the training for a time budget, but time_budget is {cfg.time_budget}: give "
                          f"--time-budget MINUTES (or leave it out for {DEFAULT_BUDGET:g} minutes)")
    budget = cfg.time_budget if "time_budget" in given else DEFAULT_BUDGET
    fp = measure_dataset(root, info)

    def seconds_left() -> float:
        return budget * 60 - (time.time() - started)

    plan = Plan(fp)
    plan.add(Choice({"time_budget": budget}, f"no time_budget given: {DEFAULT_BUDGET:g} minutes assumed "
                                             f"(set --time-budget MINUTES)"), given)
    scale = plan.add(scale_rule(fp, given.get("scale_min"), given.get("scale_max")), given).settings
    context = crop_rule(fp, cfg.pad, scale["scale_min"])  # (weighed against the budget below)
    plan.add(class_weight_rule(fp), given)
    plan.add(Choice({"colour_jitter": 0.3}, "photographs differ in light and colour: brightness, contrast and "
                                            "saturation each by up to 30 %"), given)

    device = env.device
    machine = plan.machine = describe(device)
    num_classes = info["num_classes"]
    own_model = "model_options" in given or cfg.model != "segmentnet"
    # The probes run at the crop the reference network was measured with, or a smaller context crop.
    probe_crop = given.get("crop_size", min(context.settings["crop_size"], REFERENCE_CROP))

    def ladder_at(crop: int) -> list[tuple[str, dict]]:
        return [(cfg.model, dict(cfg.model_options))] if own_model else model_ladder(fp, crop)

    reference = ladder_at(probe_crop)[0 if own_model else 1][1]
    probe_batch = given.get("batch_size", 8)

    def measured(options: dict, precision: str, batch: int, crop: int) -> dict:
        result = step_speed(cfg.model if own_model else "segmentnet", options, num_classes, crop, batch, device,
                            precision)
        plan.speeds.append({"model_options": options, "precision": precision, "batch": batch, "crop": crop, **result})
        return result

    # Precision: each candidate measured on the reference network, unless given.
    if "amp" in given or "amp_dtype" in given:
        precisions = ["float32" if not cfg.amp else cfg.amp_dtype if cfg.amp_dtype != "auto" else
                      ("bfloat16" if device.type == "cuda" and machine["bf16"] else
                       "float16" if device.type == "cuda" else "float32")]
    else:
        precisions = ["float32", "bfloat16" if device.type == "cpu" or machine["bf16"] else "float16"]
    probes = {p: measured(reference, p, probe_batch, probe_crop) for p in precisions}
    if not any(r["images_per_second"] > 0 for r in probes.values()):
        raise ConfigError(f"the network {reference} does not fit this device ({machine['name']}) at batch "
                          f"{probe_batch} and crop {probe_crop}: give a smaller --batch-size or --crop-size")
    choice = plan.add(precision_rule({p: r["images_per_second"] for p, r in probes.items()}, device.type), given)
    precision = choice.settings["amp_dtype"] if choice.settings["amp"] else "float32"
    if precision not in probes:  # (given amp true with amp_dtype auto)
        precision = precisions[0]
    probe_ips = max(probes[precision]["images_per_second"], 1e-9)
    crop = plan.add(crop_budget_rule(context, probe_ips, seconds_left() * (1 - VAL_SHARE)), given).settings["crop_size"]
    area = (crop / probe_crop) ** 2  # (a step's work and memory grow with the crop's area)
    reference_ips = probe_ips / area
    plan.add(Choice({"channels_last": device.type == "cuda"},
                    "NHWC suits tensor cores" if device.type == "cuda" else
                    "NHWC is slower or unsafe on CPUs (bench/RESULTS.md)"), given)
    peak = probes[precision]["peak_memory_bytes"]
    batch = plan.add(batch_rule(device.type, machine["memory_bytes"], peak and int(peak * area), probe_batch,
                                fp["train_images"], given.get("batch_size"), env.world_size, cfg.grad_accum),
                     given).settings["batch_size"]
    if "loss" in given:
        plan.add(Choice({"loss": cfg.loss}, ""), given)
    else:
        extra = loss_seconds("ce+lovasz", num_classes, crop, batch, device) - \
            loss_seconds("ce+jaccard", num_classes, crop, batch, device)
        plan.speeds.append({"lovasz_extra_seconds_per_step": extra, "batch": batch, "crop": crop})
        plan.add(loss_rule(extra, batch / reference_ips), given)

    train_set = SegmentationDataset(root, "train", train_transform(
        crop, (plan.settings()["scale_min"], plan.settings()["scale_max"]), cfg.flip, cfg.pad,
        plan.settings()["colour_jitter"]), seed=cfg.seed)
    loader_ips = max(loader_speed(train_set), 1e-9)
    plan.speeds.append({"loader_images_per_second_per_worker": loader_ips})
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = plan.add(workers_rule(device.type, machine["cores"], reference_ips, loader_ips, processes),
                       given).settings["workers"]
    workers = loader_workers(workers)  # (-1: one per core)
    speeds: dict[str, float] = {}

    def images_per_second(options: dict) -> float:
        """All processes' pace with a network, as the loader processes feed it (none: loading takes
        turns with the computation); measured once."""
        key = json.dumps(options, sort_keys=True)
        if key not in speeds:
            ips = probe_ips if options == reference and batch == probe_batch and crop == probe_crop else \
                max(measured(options, precision, batch, crop)["images_per_second"], 1e-9)
            fed = min(ips, loader_ips * workers) if workers > 0 else 1 / (1 / ips + 1 / loader_ips)
            speeds[key] = fed * env.world_size
        return speeds[key]

    if own_model:
        options = plan.add(Choice({"model": cfg.model, "model_options": dict(cfg.model_options)},
                                  "your network (its default options)"), given).settings["model_options"]
    else:  # (a rung that does not fit the device at this batch measures 0 images/s: never chosen)
        choice, _ = model_rule(ladder_at(crop), images_per_second, seconds_left() * (1 - VAL_SHARE),
                               fp["train_images"])
        options = plan.add(choice, given).settings["model_options"]
    val_size = (int(fp["short_side"]["median"]), int(fp["long_side"]["median"]))
    val_seconds = inference_seconds(cfg.model if own_model else "segmentnet", options, num_classes, val_size, device,
                                    precision) * max(fp["val_images"], 1) / env.world_size + 2.0  # (+ saving, pictures)
    plan.add(schedule_rule(fp["train_images"], batch, images_per_second(options), val_seconds, seconds_left(),
                           given.get("epochs"), env.world_size, cfg.grad_accum), given)

    plan.planning_seconds = time.time() - started
    if plan.planning_seconds > budget * 30:
        raise ConfigError(f"planning took {plan.planning_seconds:.0f} s, more than half of the {budget:g}-minute "
                          f"budget: give a longer --time-budget, or set the settings yourself (without --auto)")
    plan.choices[0].reason += f"; the {plan.planning_seconds:.0f} s of this plan count in it"
    return plan


def resumed_plan(cfg, given: dict) -> Plan:
    """An auto run resumed: the settings its checkpoint was trained with (its plan's), unless given again;
    the plan's record (plan.json beside the checkpoint) carried over, with this resume added."""
    state = check_checkpoint(load_checkpoint(cfg.resume, map_location="cpu"), cfg.resume, resume=True)
    trained = state.get("config") if isinstance(state.get("config"), dict) else {}
    kept = {k: trained[k] for k in PLANNED if k in trained and k not in given}
    config_from_dict(type(cfg), {**dataclasses.asdict(cfg), **kept}, source=f"checkpoint {cfg.resume}")  # (types)
    before = Path(cfg.resume).parent / PLAN_FILE
    record: dict = {}
    if before.exists():
        try:
            record = read_json(before, "the plan")
        except (OSError, ValueError, DataError) as exc:
            record = {}
            print(f"warning: {before} cannot be read ({exc}); the resumed run keeps its settings, but its plan's "
                  f"reasons are lost", file=sys.stderr)
    record = record if isinstance(record, dict) else {}

    def entry(key: str, kind: type):
        return record.get(key) if isinstance(record.get(key), kind) else kind()

    plan = Plan(entry("fingerprint", dict), entry("machine", dict), entry("speeds", list))
    plan.choices = [Choice(c["settings"], c["reason"], c.get("by") if c.get("by") in ("rule", "you") else "rule")
                    for c in entry("choices", list)
                    if isinstance(c, dict) and isinstance(c.get("settings"), dict) and isinstance(c.get("reason"), str)]
    seconds = record.get("planning_seconds")
    plan.planning_seconds = float(seconds) if is_number(seconds) and seconds >= 0 else 0.0
    plan.choices.append(Choice(kept, f"resumed from {cfg.resume}: the settings it was trained with, nothing measured "
                                     f"again"))
    return plan


def plan_table(plan: Plan) -> str:
    """The plan as the training prints it: one line per choice."""
    rows = choice_rows(plan.as_dict()["choices"])
    return "\n".join(["plan (--auto true; plan.json in the run folder):"] +
                     [f"  {values:<52} {reason}" for values, reason in rows])
