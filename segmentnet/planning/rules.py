"""The plan's rules: each takes what it needs of the dataset fingerprint, the machine's measured
speeds and the budget, and returns its settings with the reason. A setting the user gave (on the
command line or in a config file) is never changed; the rules after it plan around it.

The numbers below are this project's measurements (bench/RESULTS.md) or the literature's, named
where they are used.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

PLAN_FILE = "plan.json"   # in the run folder: fingerprint, machine, measured speeds, every choice and its reason
DEFAULT_BUDGET = 60.0      # minutes assumed when an auto run is given no time_budget
TARGET_SAMPLES = 80_000    # training images a run should see: CamVid's recipe still gained up to ~90k (RESULTS.md)
MIN_EPOCHS = 10            # below this many passes a network has not learned the rare classes at all
VAL_SHARE = 0.05           # about this share of the time validates: the last epochs score best as the rate decays
MIN_VALIDATIONS = 5        # ... but at least this many validations, a curve to read (the last is nearly always best),
MAX_VAL_SHARE = 0.15       # ... as long as they take no more than this share
REFERENCE = {"width": 32, "depth": 4, "blocks": 1, "stem_stride": 4}  # configs/camvid-cpu.json's network
REFERENCE_CROP = 256       # ... and its crop
BASE_LR, BASE_BATCH = 4e-3, 8  # AdamW's peak learning rate measured at batch 8 (configs/camvid-cpu.json)
WARMUP_STEPS = 100         # optimiser steps of linear warmup (the recipe's 2 epochs of 45 steps)
LOSS_COST_SHARE = 0.15     # a loss term may add at most this share to a training step
HALF_GAIN = 1.1            # half precision is taken where it is at least this much faster than float32


@dataclass
class Choice:
    settings: dict            # Config field -> value
    reason: str
    by: str = "rule"          # rule, or you (every setting of it was given)

    def as_dict(self) -> dict:
        return {"settings": self.settings, "reason": self.reason, "by": self.by}


@dataclass
class Plan:
    fingerprint: dict
    machine: dict = field(default_factory=dict)
    speeds: list = field(default_factory=list)     # each measurement: what, settings, images/s
    choices: list = field(default_factory=list)    # Choice, in the order they were made
    planning_seconds: float = 0.0

    def settings(self) -> dict:
        merged = {}
        for choice in self.choices:
            merged.update(choice.settings)
        return merged

    def add(self, choice: Choice, given: dict) -> Choice:
        """Record `choice`, with the user's own value for each of its settings that was given."""
        mine = {k: given[k] for k in choice.settings if k in given}
        if mine:
            rest = {k: v for k, v in choice.settings.items() if k not in given}
            choice = Choice({**choice.settings, **mine}, f"set by you ({', '.join(mine)})"
                            + (f"; the rest: {choice.reason}" if rest else ""), "you" if not rest else "rule")
        self.choices.append(choice)
        return choice

    def as_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "machine": self.machine, "speeds": self.speeds,
                "choices": [c.as_dict() for c in self.choices], "planning_seconds": self.planning_seconds,
                "settings": self.settings()}


MAX_CELL = 600  # characters of a choice shown in a table (a plan.json is read back from a run folder)


def choice_rows(choices) -> list[tuple[str, str]]:
    """(settings as text, reason) per choice of a plan (Plan.as_dict's "choices", or as read back from a
    plan.json: entries not of that shape are left out)."""
    rows = []
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict) and isinstance(choice.get("settings"), dict) and isinstance(choice.get("reason"), str):
            values = ", ".join(f"{k} {json.dumps(v)}" for k, v in choice["settings"].items())
            rows.append(tuple(" ".join(text.split())[:MAX_CELL] for text in (values, choice["reason"])))
    return rows


def round32(value: float) -> int:
    return int(32 * max(1, round(value / 32)))


def present_classes(fp: dict) -> list[dict]:
    """Classes seen in at least 5 % of the training images: what the scores are made of."""
    return [c for c in fp["classes"] if c["image_share"] >= 0.05 and c["extent"] is not None]


def crop_rule(fp: dict, pad: bool = True, scale_min: float = 0.5) -> Choice:
    short = fp["short_side"]["median"]
    crop = min(512, max(128, round32(0.7 * short)))
    why = (f"about 0.7 of the images' median shorter side ({short:g} px), in 128..512: context for the large "
           f"regions, yet random crops")
    if not pad:  # every image shrunk by scale_min must still hold a crop
        fit = int(scale_min * fp["short_side"]["min"])
        if fit < crop:
            crop = max(8, fit // 32 * 32 if fit >= 32 else fit)
            why += f"; with pad off, what the smallest image holds at scale {scale_min:g}"
    return Choice({"crop_size": crop}, why)


def crop_budget_rule(context: Choice, images_per_second: float, train_seconds: float) -> Choice:
    """The context crop (crop_rule's) where the budget affords it. A step's work grows with the crop's
    area, so a crop above the reference's REFERENCE_CROP is taken only as far as the budget still shows
    the network TARGET_SAMPLES images at it (`images_per_second`: measured at the reference crop): more
    images first, then more context, as the model rule spends the budget."""
    wanted = context.settings["crop_size"]
    if wanted <= REFERENCE_CROP:
        return context
    seen = images_per_second * train_seconds
    affordable = int(REFERENCE_CROP * math.sqrt(seen / TARGET_SAMPLES)) // 32 * 32
    crop = max(REFERENCE_CROP, min(wanted, affordable))
    at = seen * (REFERENCE_CROP / crop) ** 2
    if crop == wanted:
        return Choice(context.settings, f"{context.reason}; the budget shows ~{at / 1000:.0f}k images at it")
    return Choice({"crop_size": crop}, f"{context.reason}: {wanted}; but at {wanted} the budget would show "
                                       f"~{seen * (REFERENCE_CROP / wanted) ** 2 / 1000:.0f}k images, under the "
                                       f"{TARGET_SAMPLES // 1000}k target: {crop} (~{at / 1000:.0f}k)")


def scale_rule(fp: dict, given_min: float | None = None, given_max: float | None = None) -> Choice:
    classes = present_classes(fp)
    smallest = min((c["extent"] for c in classes), default=1.0)
    name = min(classes, key=lambda c: c["extent"])["name"] if classes else "none"
    high = 1.5 if smallest < 0.25 else 1.0
    low = 0.25 if smallest >= 0.5 else 0.5
    why = (f"the smallest class's regions ({name}) span {smallest:.2f} of the shorter side: "
           + ("zooming in (up to 1.5) enlarges them" if high > 1 else "none is small, so no zooming in")
           + ("; every class is large, so shrinking to 0.25 lets a crop hold whole objects" if low < 0.5 else ""))
    if given_min is not None and given_min > high:  # (the other end of a given one stays a range)
        high = given_min
    if given_max is not None and given_max < low:
        low = given_max
    return Choice({"scale_min": low, "scale_max": high}, why)


def class_weight_rule(fp: dict) -> Choice:
    shares = [c["pixel_share"] for c in fp["classes"] if c["pixel_share"] > 0]
    ratio = max(shares) / min(shares) if shares else 1.0
    if ratio >= 10:
        return Choice({"class_weights": "enet"}, f"the most frequent class has {ratio:.0f}x the pixels of the rarest: "
                      f"ENet's weights 1/ln(1.02 + f) lift the rare ones (on CamVid they beat none by 0.16 and "
                      f"median frequency by 0.05)")
    return Choice({"class_weights": "none"}, f"classes within {ratio:.1f}x of each other in pixels: weights would "
                                             f"only paint the rarer class too widely (humanseg: 0.59 with, 0.64 without)")


def loss_rule(extra_seconds: float, step_seconds: float) -> Choice:
    """Cross-entropy for every pixel plus a term for the score. Lovász-Softmax is a surrogate of the
    Jaccard index itself (Berman et al., CVPR 2018, best after or beside cross-entropy), but it sorts
    every pixel's error per class: taken where that costs at most LOSS_COST_SHARE of a training step
    (`extra_seconds`: its measured time beyond the soft Jaccard's), else the soft Jaccard loss."""
    share = extra_seconds / max(step_seconds, 1e-9)
    if share <= LOSS_COST_SHARE:
        return Choice({"loss": "ce+lovasz"}, f"Lovász-Softmax optimises the Jaccard index itself; measured to add "
                                             f"{100 * share:.0f} % to a step here")
    return Choice({"loss": "ce+jaccard"}, f"Lovász-Softmax's sorting would add {100 * share:.0f} % to every step "
                                          f"here (fewer epochs in the budget): the soft Jaccard loss instead")


def model_ladder(fp: dict, crop: int) -> list[tuple[str, dict]]:
    """SegmentNet sizes from cheap to costly. The depth gives the coarsest features cells of at least a
    quarter of the crop (context for the largest regions). Above the reference, a finer entry stride
    comes first where some class is thinner than two cells of the stride-4 entry, else more width."""
    def sized(width: int, stride: int) -> dict:
        depth = 4
        while stride * 2 ** depth < crop / 4 and depth < 6:
            depth += 1
        return {"width": width, "depth": depth, "blocks": 1, "stem_stride": stride}

    thin = any(c["width_px"] < 8 for c in present_classes(fp))
    above = [(32, 2), (48, 2)] if thin else [(48, 4), (64, 4)]
    return [(f"w{w}-s{s}", sized(w, s)) for w, s in [(16, 4), (32, 4), *above]]


def model_rule(ladder: list[tuple[str, dict]], images_per_second, train_seconds: float, train_images: int,
               ) -> tuple[Choice, int]:
    """The largest network whose budget still shows it TARGET_SAMPLES training images; never below the
    reference (the second rung) unless that one would not even get MIN_EPOCHS passes.
    `images_per_second(options)` measures (or looks up) a rung's pace; rungs are measured bottom up.
    Returns the choice and the index of the rung."""
    seen = {1: images_per_second(ladder[1][1]) * train_seconds}
    pick = 1
    if seen[1] < MIN_EPOCHS * train_images:
        pick, seen[0] = 0, images_per_second(ladder[0][1]) * train_seconds
    else:
        for index in range(2, len(ladder)):  # (costs rise up the ladder: stop at the first that falls short)
            seen[index] = images_per_second(ladder[index][1]) * train_seconds
            if seen[index] < TARGET_SAMPLES:
                break
            pick = index
    name, options = ladder[pick]
    reason = (f"{name}: the largest network the budget shows {TARGET_SAMPLES // 1000}k training images "
              f"({seen[pick] / 1000:.0f}k planned)" if pick >= 2 else
              f"{name}: the reference network (configs/camvid-cpu.json); a larger one would see "
              f"{seen.get(2, 0) / 1000:.0f}k images, under the {TARGET_SAMPLES // 1000}k target"
              if pick == 1 and len(ladder) > 2 else
              f"{name}: the budget would show the reference network fewer than {MIN_EPOCHS} epochs")
    return Choice({"model": "segmentnet", "model_options": options}, reason), pick


def precision_rule(speeds: dict[str, float], device: str) -> Choice:
    """speeds: precision -> measured images/s of the reference network."""
    fp32 = speeds.get("float32", 0.0)
    best = max(speeds, key=speeds.get)
    shown = ", ".join(f"{k} {v:.1f}" for k, v in speeds.items())
    if best != "float32" and speeds[best] >= HALF_GAIN * fp32:
        return Choice({"amp": True, "amp_dtype": best}, f"measured images/s: {shown}: {best} autocast is the fastest")
    return Choice({"amp": False, "amp_dtype": "auto"}, f"measured images/s: {shown}: half precision gains nothing "
                                                       f"here{' (no bf16 units?)' if device == 'cpu' else ''}")


def batch_rule(device: str, memory_bytes: int | None, peak_bytes: int | None, measured_batch: int,
               train_images: int, given_batch: int | None = None, world_size: int = 1, grad_accum: int = 1) -> Choice:
    """CPU: 8 (a step is compute-bound: a larger batch brings no speed, only fewer steps). GPU: the
    largest power of two to 32 whose memory (measured at `measured_batch`) fits half of the device's.
    At least 4 steps an epoch for each process. The learning rate follows the batch of all processes
    and accumulated steps (a given batch too): square-root scaling, as for Adam."""
    if given_batch is not None:
        batch, why = given_batch, "your batch size"
    elif device != "cuda" or not memory_bytes or not peak_bytes:
        batch, why = 8, "on a CPU a step is compute-bound: larger batches bring no speed, only fewer steps"
    else:
        per_image = peak_bytes / measured_batch
        batch = 8
        while batch < 32 and per_image * batch * 2 <= 0.5 * memory_bytes:
            batch *= 2
        why = (f"{per_image / 2 ** 20:.0f} MiB per image measured, {memory_bytes / 2 ** 30:.0f} GiB on the device: "
               f"the largest power of two to 32 within half of it")
    share = max(1, train_images // world_size)
    while given_batch is None and batch > 1 and share // batch < 4:
        batch //= 2
    effective = batch * world_size * grad_accum
    lr = round(BASE_LR * math.sqrt(effective / BASE_BATCH), 6)
    return Choice({"batch_size": batch, "lr": lr}, f"{why}; AdamW lr {BASE_LR:g} at batch {BASE_BATCH}, scaled by the "
                                                   f"square root of {effective} images a step")


def workers_rule(device: str, cores: int, model_ips: float, loader_ips: float, processes: int = 1) -> Choice:
    """As many loader processes as keep the network fed (`model_ips`: one training process's pace),
    within the cores the computation leaves; the cores are shared by the `processes` of this machine."""
    needed = math.ceil(model_ips / max(loader_ips, 1e-9))
    mine = max(1, cores // processes)
    cap = max(1, mine - 1) if device == "cuda" else max(1, mine // 2)
    workers = max(1, min(needed, cap, 8))
    return Choice({"workers": workers}, f"the network takes {model_ips:.0f} images/s, one loader process makes "
                                        f"{loader_ips:.0f}: {needed} needed, at most {cap} of {mine} cores "
                                        f"({'the GPU computes' if device == 'cuda' else 'the rest compute'})")


def schedule_rule(train_images: int, batch: int, images_per_second: float, val_seconds: float, run_seconds: float,
                  max_epochs: int | None = None, world_size: int = 1, grad_accum: int = 1) -> Choice:
    """Validation every few epochs, so that it costs about VAL_SHARE of the time, more often where the
    run would otherwise validate fewer than MIN_VALIDATIONS times (up to MAX_VAL_SHARE of the time):
    with the rate decaying to 0 the last epochs score best, so more validations buy a finer curve and
    cost epochs;
    warmup of about WARMUP_STEPS steps; the epochs are what the budget holds (or fewer, if given)."""
    epoch_seconds = train_images / max(images_per_second, 1e-9)
    cheap = max(1, math.ceil(val_seconds / (VAL_SHARE * epoch_seconds)))
    dearest = max(1, math.ceil(val_seconds / (MAX_VAL_SHARE * epoch_seconds)))

    def epochs_at(every: int) -> int:
        held = max(1, int(run_seconds / (epoch_seconds + val_seconds / every)))
        return min(held, max_epochs) if max_epochs else held

    val_every = max(dearest, min(cheap, epochs_at(cheap) // MIN_VALIDATIONS))
    epochs = epochs_at(val_every)
    val_every = max(1, min(val_every, epochs))
    steps = max(1, train_images // (batch * world_size) // grad_accum)
    warmup = round(min(max(WARMUP_STEPS / steps, 1.0), max(epochs * 0.1, 0.1)), 2)
    return Choice({"epochs": max_epochs or 100_000, "val_every": val_every, "warmup_epochs": warmup},
                  f"an epoch ~{epoch_seconds:.0f} s and a validation ~{val_seconds:.0f} s: validate every {val_every} "
                  f"(about {max(1, epochs // val_every)} times in ~{epochs} epochs); warmup {warmup} epochs "
                  f"(~{WARMUP_STEPS} steps); " + ("your epochs" if max_epochs else "the time budget ends the run"))
