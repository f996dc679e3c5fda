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
import time
from pathlib import Path

from ..checkpoint import check_checkpoint, load_checkpoint
from ..config import config_from_dict
from ..data import SegmentationDataset, read_dataset_json
from ..distributed import DistEnv, broadcast_from_main
from ..errors import DataError
from ..files import read_json
from ..transforms import train_transform
from .fingerprint import measure_dataset
from .machine import describe, inference_seconds, loader_speed, loss_seconds, step_speed
from .rules import (DEFAULT_BUDGET, PLAN_FILE, VAL_SHARE, Choice, Plan, choice_rows, batch_rule, class_weight_rule, crop_rule,
                    loss_rule, model_ladder, model_rule, precision_rule, scale_rule, schedule_rule, workers_rule)

# What a plan decides: on resume these come from the checkpoint's config unless given again.
PLANNED = ("time_budget", "crop_size", "scale_min", "scale_max", "colour_jitter", "class_weights", "loss", "amp",
           "amp_dtype", "channels_last", "batch_size", "lr", "workers", "model", "model_options", "epochs",
           "val_every", "warmup_epochs")


def plan_training(cfg, given: dict, env: DistEnv):
    """The plan (made on the first process, shared with the others) and cfg with its settings."""
    plan = None
    if env.is_main:
        plan = resumed_plan(cfg, given) if cfg.resume else make_plan(cfg, given, env)
    plan = broadcast_from_main(plan, env)
    return dataclasses.replace(cfg, **plan.settings()), plan


def make_plan(cfg, given: dict, env: DistEnv) -> Plan:
    started = time.time()
    root = Path(cfg.data_dir) / cfg.dataset
    info = read_dataset_json(root)
    fp = measure_dataset(root, info)
    plan = Plan(fp)
    given_budget = "time_budget" in given and cfg.time_budget > 0
    budget = cfg.time_budget if given_budget else DEFAULT_BUDGET
    plan.choices.append(Choice({"time_budget": budget}, f"set by you: {budget:g} minutes", "you") if given_budget else
                        Choice({"time_budget": budget}, f"no time_budget given: {DEFAULT_BUDGET:g} minutes assumed "
                                                        f"(set --time-budget MINUTES)"))
    for rule in (crop_rule, scale_rule, class_weight_rule):
        plan.add(rule(fp), given)
    plan.add(Choice({"colour_jitter": 0.3}, "photographs differ in light and colour: brightness, contrast and "
                                            "saturation each by up to 30 %"), given)
    chosen = {**dataclasses.asdict(cfg), **plan.settings()}

    device = env.device
    machine = plan.machine = describe(device)
    num_classes = info["num_classes"]
    crop = chosen["crop_size"]
    own_model = "model" in given or "model_options" in given
    ladder = [(cfg.model, dict(cfg.model_options))] if own_model else model_ladder(fp, crop)
    reference = ladder[0][1] if own_model else ladder[1][1]
    model_name = cfg.model if own_model else "segmentnet"

    def measured(options: dict, precision: str, batch: int) -> dict:
        result = step_speed(model_name, options, num_classes, crop, batch, device, precision)
        plan.speeds.append({"model": model_name, "model_options": options, "precision": precision, "batch": batch,
                            "crop": crop, **result})
        return result

    # Precision: each candidate measured on the reference network, unless given.
    if "amp" in given or "amp_dtype" in given:
        precisions = ["float32" if not cfg.amp else cfg.amp_dtype if cfg.amp_dtype != "auto" else
                      ("bfloat16" if device.type == "cuda" and machine["bf16"] else
                       "float16" if device.type == "cuda" else "float32")]
    else:
        precisions = ["float32", "bfloat16" if device.type == "cpu" or machine["bf16"] else "float16"]
    at8 = {p: measured(reference, p, 8) for p in precisions}
    choice = plan.add(precision_rule({p: r["images_per_second"] for p, r in at8.items()}, device.type), given)
    precision = choice.settings["amp_dtype"] if choice.settings["amp"] else "float32"
    if precision == "auto":  # (given amp true with amp_dtype auto)
        precision = precisions[0]
    plan.add(Choice({"channels_last": device.type == "cuda"},
                    "NHWC suits tensor cores" if device.type == "cuda" else
                    "NHWC is slower or unsafe on CPUs (bench/RESULTS.md)"), given)
    choice = plan.add(batch_rule(device.type, machine["memory_bytes"], at8[precision]["peak_memory_bytes"],
                                 fp["train_images"], given.get("batch_size")), given)
    batch = choice.settings["batch_size"]
    if "loss" not in given:
        extra = (loss_seconds("ce+lovasz", num_classes, crop, batch, device) -
                 loss_seconds("ce+jaccard", num_classes, crop, batch, device))
        plan.speeds.append({"lovasz_extra_seconds_per_step": extra, "batch": batch, "crop": crop})
        plan.add(loss_rule(extra, batch / at8[precision]["images_per_second"]), given)
    else:
        plan.add(Choice({"loss": cfg.loss}, "set by you"), given)
    speed_cache: dict[str, float] = {}

    train_set = SegmentationDataset(root, "train", train_transform(
        crop, (chosen["scale_min"], chosen["scale_max"]), cfg.flip, cfg.pad, chosen["colour_jitter"]), seed=cfg.seed)
    loader_ips = loader_speed(train_set)
    model_ips = at8[precision]["images_per_second"]
    choice = plan.add(workers_rule(device.type, machine["cores"], model_ips * env.world_size, loader_ips), given)
    workers = choice.settings["workers"]
    plan.speeds.append({"loader_images_per_second_per_worker": loader_ips})

    def images_per_second(options: dict) -> float:
        """A network's pace, capped by what the loader processes make; measured once."""
        key = json.dumps(options, sort_keys=True)
        if key not in speed_cache:
            ips = (at8[precision]["images_per_second"] if options == reference and batch == 8 else
                   measured(options, precision, batch)["images_per_second"])
            speed_cache[key] = min(ips * env.world_size, loader_ips * workers * env.world_size)
        return speed_cache[key]

    train_seconds = budget * 60 * (1 - VAL_SHARE) - (time.time() - started)
    if own_model:
        plan.add(Choice({"model": cfg.model, "model_options": dict(cfg.model_options)}, "set by you"), given)
        options = dict(cfg.model_options)
    else:
        choice, _ = model_rule(ladder, images_per_second, train_seconds, fp["train_images"])
        choice = plan.add(choice, given)
        options = choice.settings["model_options"]
    val_size = (int(fp["short_side"]["median"]), int(fp["long_side"]["median"]))
    val_seconds = inference_seconds(model_name, options, num_classes, val_size, device, precision) * \
        max(fp["val_images"], 1) / env.world_size + 2.0  # (+ saving and pictures)
    plan.add(schedule_rule(fp["train_images"], batch, images_per_second(options), val_seconds, train_seconds), given)

    plan.planning_seconds = time.time() - started
    budget_choice = plan.choices[0]  # the plan's own minutes come out of the budget
    budget_choice.settings["time_budget"] = round(max(budget - plan.planning_seconds / 60, 0.1), 3)
    budget_choice.reason += f"; {plan.planning_seconds:.0f} s of it went to this plan"
    return plan


def resumed_plan(cfg, given: dict) -> Plan:
    """An auto run resumed: the settings its checkpoint was trained with (its plan's), unless given again;
    the plan record from plan.json beside the checkpoint where it is readable."""
    state = check_checkpoint(load_checkpoint(cfg.resume, map_location="cpu"), cfg.resume, resume=True)
    trained = state.get("config") if isinstance(state.get("config"), dict) else {}
    kept = {k: trained[k] for k in PLANNED if k in trained and k not in given}
    config_from_dict(type(cfg), {**dataclasses.asdict(cfg), **kept}, source=f"checkpoint {cfg.resume}")  # (types)
    before = Path(cfg.resume).parent / PLAN_FILE
    record: dict = {}
    try:
        record = read_json(before, "the plan") if before.is_file() else {}
    except (OSError, ValueError, DataError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    plan = Plan(record.get("fingerprint") if isinstance(record.get("fingerprint"), dict) else {},
                record.get("machine") if isinstance(record.get("machine"), dict) else {},
                record.get("speeds") if isinstance(record.get("speeds"), list) else [])
    plan.choices.append(Choice(kept, f"the plan of {cfg.resume}, continued: nothing measured again"))
    return plan


def plan_table(plan: Plan) -> str:
    """The plan as the training prints it: one line per choice."""
    rows = choice_rows(plan.as_dict()["choices"])
    return "\n".join(["plan (--auto true; plan.json in the run folder):"] +
                     [f"  {values:<52} {reason}" for values, reason in rows])
