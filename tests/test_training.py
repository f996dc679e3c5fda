"""Training loop: a short run writes its outputs, and resuming gives the same weights."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script, tiny_train_config, train_args
from PIL import Image

import TrainSegmentNet
from segmentnet.core.checkpoint import load_checkpoint
from segmentnet.core.errors import ConfigError, DataError
from segmentnet.core.files import OWNER_FILE, owner_of
from segmentnet.datasets import DATASETS
from segmentnet.models import MODELS, build_model
from segmentnet.training.engine import train
from segmentnet.training.runs import LOCK_FILE


def test_short_run_writes_outputs(small_voc, tmp_path):
    summary = train(tiny_train_config(small_voc, tmp_path / "run", epochs=2))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_miou", "val_pixel_acc", "lr", "val_loss"):
        assert all(isinstance(r[key], float) for r in records), key
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["model_name"] == "segmentnet" and state["num_classes"] == 21
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert (run / "best.pt").exists()
    assert summary["best_miou"] == max(r["val_miou"] for r in records)


def test_out_folder_is_never_silently_reused(small_voc, tmp_path):
    train(tiny_train_config(small_voc, tmp_path / "run"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_train_config(small_voc, tmp_path / "run"))


def train_until_a_crash_in_the_second_validation(cfg, monkeypatch) -> None:
    """Train cfg, crashing during epoch 2 (in its validation): last.pt still holds the end of epoch 1."""
    from segmentnet.training import engine

    real_evaluate, calls = engine.evaluate, []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", crash_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(engine, "evaluate", real_evaluate)


@pytest.mark.parametrize("amp_dtype", ["auto", pytest.param("float16", marks=pytest.mark.slow)])  # fp32 on CPU; fp16 autocast
# with a gradient scaler (its scaler state restored: checked in the full tier)
def test_interrupted_and_resumed_equals_uninterrupted(small_voc, tmp_path, monkeypatch, amp_dtype):
    train(tiny_train_config(small_voc, tmp_path / "full", epochs=3, amp_dtype=amp_dtype))
    full = load_checkpoint(tmp_path / "full" / "last.pt")

    train_until_a_crash_in_the_second_validation(
        tiny_train_config(small_voc, tmp_path / "part", epochs=3, amp_dtype=amp_dtype), monkeypatch)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1

    train(tiny_train_config(small_voc, "", epochs=3, amp_dtype=amp_dtype, resume=str(tmp_path / "part" / "last.pt")))
    resumed = load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed["epoch"] == 3
    # fp16: the scaler's state (scale, steps since the last overflow) continues too, else it would restart.
    assert resumed["scaler"] == full["scaler"] and (full["scaler"] is None) == (amp_dtype == "auto")
    assert full["model"].keys() == resumed["model"].keys()
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("requested,cores,local_world_size,expected", [
    (-1, 16, None, 8),   # one process on a 16-core GPU box: capped at 8
    (-1, 16, "4", 4),    # torchrun with 4 processes on the node share the cores
    (-1, 2, None, 2),
    (-1, 1, "2", 1),     # never 0 by default: loading would then stall the step itself
    (3, 16, None, 3),    # an explicit count is kept
    (0, 16, None, 0),
])
def test_default_loader_workers_share_the_cores(monkeypatch, requested, cores, local_world_size, expected):
    from segmentnet.training.data import loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert loader_workers(requested) == expected


# ----------------------------------------------------------------------------- gradient accumulation


def sgd_config(data, out, **overrides):
    """Plain SGD (no momentum, constant rate): the weights change by exactly lr x the gradient, so a
    gradient taken at the wrong scale, or not applied, shows."""
    return tiny_train_config(data, out, **{"optimizer": "sgd", "momentum": 0.0, "warmup_epochs": 0.0,
                                           "poly_power": 0.0, "lr": 0.05, **overrides})


def test_grad_accum_beyond_an_epoch_steps_on_the_batches_there_are(small_voc, tmp_path):
    # 24 train images in batches of 4: 6 batches per epoch. grad_accum 8 once made no step at all.
    train(sgd_config(small_voc, tmp_path / "eight", grad_accum=8))
    train(sgd_config(small_voc, tmp_path / "six", grad_accum=6))  # the same window: all 6 batches, loss / 6
    eight, six = load_checkpoint(tmp_path / "eight" / "last.pt"), load_checkpoint(tmp_path / "six" / "last.pt")
    torch.manual_seed(0)
    initial = build_model("segmentnet", 21, **eight["model_options"]).state_dict()
    assert max(float((eight["model"][k] - initial[k]).abs().max()) for k in initial) > 1e-3, "no optimiser step"
    for key, weight in six["model"].items():
        assert torch.equal(eight["model"][key], weight), key


def test_accumulation_windows_end_with_each_epoch(small_voc, tmp_path, monkeypatch):
    from segmentnet.training import loops, optim

    steps, real_step = [], loops.optimizer_step
    monkeypatch.setattr(loops, "optimizer_step", lambda *a: (steps.append(1), real_step(*a)))
    # 6 batches per epoch in windows of 4: 4 + 2 per epoch, so 2 steps per epoch, nothing carried over.
    train(sgd_config(small_voc, tmp_path / "run", grad_accum=4, epochs=2))
    assert len(steps) == 4
    assert [optim.accumulation_window(1, i, 6, 4) for i in range(6)] == [
        (2, 4, False), (2, 4, False), (2, 4, False), (2, 4, True), (3, 2, False), (3, 2, True)]


@pytest.mark.slow
def test_resume_with_a_window_that_does_not_divide_the_epoch(small_voc, tmp_path, monkeypatch):
    """The checkpoint at an epoch's end holds every gradient: nothing half-accumulated is lost."""
    train(sgd_config(small_voc, tmp_path / "full", grad_accum=4, epochs=2))
    train_until_a_crash_in_the_second_validation(sgd_config(small_voc, tmp_path / "part", grad_accum=4, epochs=2),
                                                 monkeypatch)
    train(sgd_config(small_voc, "", grad_accum=4, epochs=2, resume=str(tmp_path / "part" / "last.pt")))
    full, resumed = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, weight in full["model"].items():
        assert torch.equal(resumed["model"][key], weight), key


# ----------------------------------------------------------------------------- run folders


def run_files(run) -> dict:
    """The run's files and their contents (the lock file names its last holder: not the run's)."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != LOCK_FILE}


def test_resume_into_another_runs_folder_is_refused(small_voc, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny_train_config(small_voc, a))
    train(tiny_train_config(small_voc, b, seed=1))
    before = run_files(b)
    with pytest.raises(ConfigError) as info:
        train(tiny_train_config(small_voc, b, epochs=2, resume=str(a / "last.pt")))
    message = str(info.value)
    assert f"run folder {b} holds another run" in message and "overwrite its checkpoints" in message
    assert f"leave out --out to continue it in its own folder {a}" in message and "a new or empty --out" in message
    assert run_files(b) == before  # nothing of b was touched


@pytest.mark.slow
def test_resume_into_a_new_folder_continues_as_a_new_run(small_voc, tmp_path):
    a, c = tmp_path / "a", tmp_path / "c"
    train(tiny_train_config(small_voc, a))
    before = run_files(a)
    train(tiny_train_config(small_voc, c, epochs=2, resume=str(a / "last.pt")))
    a_id = json.loads((a / "config.json").read_text())["run_id"]
    config = json.loads((c / "config.json").read_text())
    assert config["run_id"] != a_id and config["forked_from"]["run_id"] == a_id
    assert owner_of(c)["run_id"] == config["run_id"] == load_checkpoint(c / "last.pt")["run_id"]
    assert [json.loads(line)["epoch"] for line in (c / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert run_files(a) == before
    # The fork continues as its own run: resuming its last.pt (in its folder) is a plain continuation.
    train(tiny_train_config(small_voc, "", epochs=3, resume=str(c / "last.pt")))
    assert json.loads((c / "config.json").read_text())["forked_from"]["run_id"] == a_id


@pytest.mark.slow
def test_resuming_a_checkpoint_older_than_last_pt_needs_resume_older(small_voc, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_config(small_voc, run))
    epoch_one = (run / "last.pt").read_bytes()
    train(tiny_train_config(small_voc, "", epochs=2, resume=str(run / "last.pt")))
    (run / "best.pt").write_bytes(epoch_one)  # best.pt of epoch 1, last.pt of epoch 2
    before = run_files(run)
    with pytest.raises(ConfigError) as info:
        train(tiny_train_config(small_voc, "", epochs=3, resume=str(run / "best.pt")))
    message = str(info.value)
    assert "is at the end of epoch 1, but its run folder" in message and "(at the end of epoch 2)" in message
    assert f"Continue with --resume {run / 'last.pt'}" in message and "--out NEW" in message
    assert "add --resume-older true" in message
    assert run_files(run) == before
    train(tiny_train_config(small_voc, "", epochs=3, resume=str(run / "best.pt"), resume_older=True))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


@pytest.mark.slow
def test_checkpoint_of_the_previous_release_resumes_into_its_own_folder(small_voc, tmp_path):
    from segmentnet.core.checkpoint import save_checkpoint

    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):  # as the previous release left them: no run id, no ownership record, no lock
        train(tiny_train_config(small_voc, folder))
        state = load_checkpoint(folder / "last.pt")
        del state["run_id"]
        for name in ("last.pt", "best.pt"):
            save_checkpoint(state, folder / name)
        config = json.loads((folder / "config.json").read_text())
        del config["run_id"], config["forked_from"]
        (folder / "config.json").write_text(json.dumps(config))
        (folder / OWNER_FILE).unlink()
        (folder / LOCK_FILE).unlink()
    with pytest.raises(ConfigError, match="holds another run .a run of an earlier SegmentNet release."):
        train(tiny_train_config(small_voc, other, epochs=2, resume=str(run / "last.pt")))
    train(tiny_train_config(small_voc, "", epochs=2, resume=str(run / "last.pt")))
    run_id = owner_of(run)["run_id"]
    assert load_checkpoint(run / "last.pt")["run_id"] == run_id == json.loads((run / "config.json").read_text())["run_id"]
    # Its best.pt, still without a run id, belongs to the folder it lies in.
    train(tiny_train_config(small_voc, "", epochs=3, resume=str(run / "best.pt"), resume_older=True))


def test_fit_to_budget_plans_the_epochs_the_minutes_left_hold():
    import time as clock

    from segmentnet.training.state import TrainState

    state = TrainState(elapsed_before=300.0, clock_start=clock.time() - 300.0, epoch=2, steps_per_epoch=10,
                       grad_accum=1, warmup_steps=10)
    # a budget of 20 minutes (1200 s, 600 s spent), at most 100 epochs
    state.fit_to_budget(20.0, 100, epoch_seconds=100.0)   # 600 s left / (100 s x margin 1.03) -> 5 more
    assert state.planned_epochs == 7 and state.total_steps == 70
    state.fit_to_budget(20.0, 4, epoch_seconds=100.0)  # epochs stays the ceiling
    assert state.planned_epochs == 4
    state.fit_to_budget(5.0, 100, epoch_seconds=100.0)  # over budget: stop now
    assert state.planned_epochs == 2
    state.warmup_steps = 50  # a warmup longer than the plan is cut to half of it, so the rate still decays
    state.fit_to_budget(20.0, 100, epoch_seconds=100.0)
    assert state.total_steps == 70 and state.warmup_steps == 35
    for pace in (1e-320, 0.0):  # a damaged checkpoint's pace (denormal or none): the epochs are the ceiling, no overflow
        state.fit_to_budget(20.0, 100, epoch_seconds=pace)
        assert state.planned_epochs == 100
    state.fit_to_budget(5259600.0, 100, epoch_seconds=1e-3)  # the largest budget
    assert state.planned_epochs == 100


def test_time_budget_ends_the_run_and_resumes_with_its_clock(small_voc, tmp_path):
    # A budget far below one epoch: the schedule is refitted to the one epoch done, and the run ends.
    summary = train(tiny_train_config(small_voc, tmp_path / "run", epochs=5, time_budget=1e-4))
    assert summary["epoch"] == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["scheduler"]["planned_epochs"] == 1 and state["scheduler"]["total_steps"] == 6
    assert 0 < records[0]["elapsed_seconds"] <= state["scheduler"]["elapsed_seconds"]
    # A larger budget on resume: the clock carries on from the checkpoint's elapsed seconds.
    state["scheduler"]["elapsed_seconds"] = 1000.0  # as if the first part had taken 1000 s
    torch.save(state, tmp_path / "run" / "last.pt")
    summary = train(tiny_train_config(small_voc, tmp_path / "run", epochs=2, time_budget=60.0,
                                      resume=str(tmp_path / "run" / "last.pt")))
    assert summary["epoch"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 1000 < records[1]["elapsed_seconds"] < 1000 + 60  # the clock carried on from the checkpoint


def test_val_every_validates_every_nth_epoch_and_always_the_last(small_voc, tmp_path):
    summary = train(tiny_train_config(small_voc, tmp_path / "run", epochs=5, val_every=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 4, 5] and all("val_miou" in r for r in records)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "epoch_002.png", "epoch_004.png", "epoch_005.png"]
    assert summary["epoch"] == 5 and summary["final_scores"]["miou"] == records[-1]["val_miou"]
    assert summary["best_epoch"] in (2, 4, 5) and load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == summary["best_epoch"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 5  # saved after every epoch all the same


def test_the_pace_is_an_average_and_counts_validation_at_its_rate():
    from segmentnet.training.state import PACE_EPOCHS, EpochPace

    pace = EpochPace(val_every=3)
    assert pace.seconds() == 0.0
    for seconds in [50.0, 9.0, 11.0, 10.0, 10.0, 12.0, 8.0][-PACE_EPOCHS - 3:]:
        pace.add(seconds)
    pace.val_seconds = 6.0
    # the mean of the last PACE_EPOCHS epochs, plus a third of one validation
    assert pace.seconds() == pytest.approx(sum([9.0, 11.0, 10.0, 10.0, 12.0, 8.0][-PACE_EPOCHS:]) / PACE_EPOCHS + 2.0)


@pytest.mark.slow
def test_a_budgeted_plan_keeps_its_length_when_single_epochs_vary(small_voc, tmp_path, monkeypatch):
    # Epochs alternating between 9 s and 11 s of training (+-10 %), validation every epoch 2 s: the
    # plan of a 20-minute budget should hardly move once a few epochs are measured.
    from types import SimpleNamespace

    from segmentnet.training import engine, state as train_state
    from segmentnet.training.state import PACE_EPOCHS, TrainState

    clock = {"now": 1000.0}
    fake_time = SimpleNamespace(time=lambda: clock["now"], perf_counter=time.perf_counter, strftime=time.strftime)
    monkeypatch.setattr(engine, "time", fake_time)
    monkeypatch.setattr(train_state, "time", fake_time)
    real_train_one_epoch, real_evaluate = engine.train_one_epoch, engine.evaluate
    plans = []

    def slow_epoch(*args, **kwargs):
        clock["now"] += 9.0 if len(plans) % 2 else 11.0
        return real_train_one_epoch(*args, **kwargs)

    def slow_evaluate(*args, **kwargs):
        clock["now"] += 2.0
        return real_evaluate(*args, **kwargs)

    def record_plan(state, minutes, max_epochs, seconds, reserve=0.0):
        real_fit(state, minutes, max_epochs, seconds, reserve)
        plans.append(state.planned_epochs)
        if len(plans) == 12:  # enough: end the run here
            state.plan_epochs(state.epoch)

    real_fit = TrainState.fit_to_budget
    monkeypatch.setattr(engine, "train_one_epoch", slow_epoch)
    monkeypatch.setattr(engine, "evaluate", slow_evaluate)
    monkeypatch.setattr(TrainState, "fit_to_budget", record_plan)
    train(tiny_train_config(small_voc, tmp_path / "run", epochs=1000, time_budget=20.0))
    assert len(plans) == 12
    settled = plans[PACE_EPOCHS:-1]  # once the pace window is full
    assert max(settled) - min(settled) <= 1, plans


def test_damaged_budget_entries_of_a_checkpoint_are_named(small_voc, tmp_path):
    train(tiny_train_config(small_voc, tmp_path / "run", time_budget=1e-4))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["epoch"] = 0  # so that the resume gets as far as the schedule
    for elapsed, pace in (("lots", 1.0), (1e300, 1.0), (10.0, -1.0), (10.0, float("inf"))):
        state["scheduler"]["elapsed_seconds"], state["scheduler"]["epoch_seconds"] = elapsed, pace
        torch.save(state, tmp_path / "bad.pt")
        with pytest.raises(DataError, match=re.escape(f"elapsed_seconds {elapsed!r} or epoch_seconds {pace!r} is not a")):
            train(tiny_train_config(small_voc, tmp_path / "run2", time_budget=5.0, resume=str(tmp_path / "bad.pt")))
    state["scheduler"]["elapsed_seconds"], state["scheduler"]["epoch_seconds"] = 10.0, 1e-320  # tiny but a number
    torch.save(state, tmp_path / "tiny-pace.pt")
    summary = train(tiny_train_config(small_voc, tmp_path / "run3", epochs=1, time_budget=1.0,
                                      resume=str(tmp_path / "tiny-pace.pt")))
    assert summary["epoch"] == 1


def test_colour_jitter_reaches_the_training_transform(small_voc):
    from segmentnet.core.distributed import DistEnv
    from segmentnet.training.data import build_loaders
    from segmentnet.training.transforms import ColourJitter

    cfg = tiny_train_config(small_voc, "unused", colour_jitter=0.3)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    train_loader, _, _ = build_loaders(cfg, env, small_voc / "voc2012")
    jitters = [t for t in train_loader.dataset.transform.transforms if isinstance(t, ColourJitter)]
    assert [j.strength for j in jitters] == [0.3]


def test_a_signal_in_an_epochs_last_batch_stops_after_its_validation_and_resumes(small_voc, tmp_path, monkeypatch):
    import signal

    from segmentnet.training import loops

    real_loss, calls = loops.compute_loss, []

    def loss_then_signal_in_the_last_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # 24 images, batch 4: the 6th batch is epoch 1's last
            signal.raise_signal(signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loops, "compute_loss", loss_then_signal_in_the_last_batch)
    cfg = tiny_train_config(small_voc, tmp_path / "run", epochs=2)
    summary = train(cfg)
    assert summary["interrupted"] == signal.SIGTERM
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)  # the epoch whole, validated: resumable
    monkeypatch.setattr(loops, "compute_loss", real_loss)
    summary = train(dataclasses.replace(cfg, resume=str(tmp_path / "run" / "last.pt")))
    assert summary["interrupted"] is None and summary["epoch"] == 2


def test_a_run_folder_inside_a_prepared_dataset_is_refused(small_voc, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_voc / "voc2012", data / "voc2012")
    out = data / "voc2012" / "runs" / "a"                    # DataSeparate --force would delete it
    with pytest.raises(DataError, match=f"run folder {out} is inside the prepared dataset"):
        train(tiny_train_config(data, out))
    assert not (data / "voc2012" / "runs").exists()


def test_a_lock_file_that_is_a_link_is_never_followed(tmp_path):
    from segmentnet.core.files import mark_owned
    from segmentnet.training.runs import claim_run_folder

    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=$HOME/bin:$PATH\n")
    run = tmp_path / "copied"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(victim)                     # a copied run folder, or one made so
    with pytest.raises(DataError, match=f"run folder {run} cannot be used: it holds files that TrainSegmentNet "
                                        f"did not write \\({LOCK_FILE}\\)"):
        claim_run_folder(run)                                # the link alone does not make the folder new
    mark_owned(run, "TrainSegmentNet", run_id="20260102-130405-3fa9c1")
    with pytest.raises(DataError, match=f"the lock file {run / LOCK_FILE} is a link"):
        claim_run_folder(run)
    assert victim.read_text() == "export PATH=$HOME/bin:$PATH\n"


def test_metrics_are_never_appended_through_a_link(small_voc, tmp_path, monkeypatch):
    from segmentnet.training import engine

    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("mine\n")
    real_evaluate = engine.evaluate

    def plant_a_link(*args, **kwargs):                       # between the start and the first record
        (run / "metrics.jsonl").symlink_to(victim)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", plant_a_link)
    with pytest.raises(DataError, match=f"the metrics file {run / 'metrics.jsonl'} is a link"):
        train(tiny_train_config(small_voc, run))
    assert victim.read_text() == "mine\n"


def test_a_finished_run_without_its_checkpoints_is_no_leftover(small_voc, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_config(small_voc, run))
    for name in ("last.pt", "best.pt"):
        (run / name).unlink()
    before = run_files(run)
    with pytest.raises(ConfigError, match=f"run folder {run} holds a run that finished epochs .its metrics.jsonl "
                                          f"records them. but no checkpoint"):
        train(tiny_train_config(small_voc, run))
    assert run_files(run) == before                          # its metrics.jsonl kept


# ----------------------------------------------------------------------------- impossible settings and damaged datasets






@pytest.mark.parametrize("overrides,message", [
    ({"dataset": "kitty"}, f"dataset 'kitty' is unknown: not a built-in one ({', '.join(sorted(DATASETS))}) nor "
                           f"prepared in "),
    ({"model": "unet2"}, f"model 'unet2' is unknown; choices: {', '.join(sorted(MODELS))}"),
    ({"loss": "tversky"}, "loss 'tversky' is unknown; choices: ce, ce+dice, ce+jaccard, ce+lovasz, dice, focal, "
                          "jaccard, lovasz"),
    ({"lr": -0.1}, "lr must be a positive number, got -0.1"),
    ({"lr": float("nan")}, "lr must be a positive number, got nan"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"crop_size": 4}, "crop_size must be >= 8 pixels, got 4"),
    ({"scale_min": 2.0, "scale_max": 1.0}, "need 0 < scale_min <= scale_max"),
    ({"grad_accum": 0}, "grad_accum must be >= 1, got 0"),
    ({"crop_size": 400, "pad": False}, "crop_size 400 is larger than"),
    ({"batch_size": 5}, "the train split has 4 images, fewer than one batch of 5"),
    ({"model_options": {"widht": 8}}, "model 'segmentnet' has no option(s) widht"),
    ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number, got inf"),
    ({"warmup_epochs": float("nan")}, "warmup_epochs must be a finite number, got nan"),
    ({"scale_max": float("inf")}, "scale_max must be a finite number, got inf"),
    ({"scale_max": float("nan")}, "scale_max must be a finite number, got nan"),
    ({"seed": -1}, "seed must be from 0 to 2**32 - 1, got -1"),
    ({"model_options": {"width": "32"}}, "model_options width of model 'segmentnet' must be a whole number, got '32'"),
    ({"model_options": {"width": 0}}, "model_options width of model 'segmentnet' must be from 1 to 1024, got 0"),
    ({"model_options": {"width": -8}}, "model_options width of model 'segmentnet' must be from 1 to 1024, got -8"),
    ({"model_options": {"width": 7.5}}, "model_options width of model 'segmentnet' must be a whole number, got 7.5"),
    ({"model_options": {"depth": 40}}, "model_options depth of model 'segmentnet' must be from 1 to 8, got 40"),
    ({"lr": 0.0}, "lr must be"), ({"model": "nope"}, "choices"),
    ({"loss": "dice?"}, "choices"), ({"epochs": 0}, "epochs must be"),
    ({"amp_dtype": "fp8"}, "amp_dtype 'fp8' is unknown; choices: auto, bfloat16, float16"),
    ({"workers": -2}, "workers must be >= 0 (or -1 for one per CPU core), got -2"),
    ({"time_budget": -1.0}, "time_budget must be from 0 (no budget) to 5259600 minutes"),
    ({"time_budget": 1e308}, "time_budget must be from 0 (no budget) to 5259600 minutes (ten years), got 1e+308"),
    ({"colour_jitter": 1.0}, "colour_jitter must be in"),
])
def test_impossible_settings_rejected_before_any_work(tmp_path, tiny_voc, overrides, message):
    """A ConfigError from train(), and from the script exit 2 with the message; no run folder either way.
    The settings themselves are checked before the dataset is read (train() is given no dataset then)."""
    data = tiny_voc if message.startswith(("crop_size 400", "the train split")) else tmp_path / "no-data-here"
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(tiny_train_config(data, tmp_path / "run", **{"batch_size": 2, **overrides}))
    assert not (tmp_path / "run").exists()
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, tmp_path / "run", **overrides))
    assert status == 2 and err.startswith("error: ") and message in err, err
    if "crop_size 400" in message:
        assert "lower crop_size, raise scale_min or set pad true" in err
    assert not (tmp_path / "run").exists()


def test_infinity_in_a_config_file(tmp_path, tiny_voc):
    import dataclasses

    values = dataclasses.asdict(tiny_train_config(tiny_voc, tmp_path / "run", batch_size=2, scale_max=float("inf"),
                                                  warmup_epochs=float("nan")))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))  # Python's json writes (and reads) Infinity and NaN
    assert "Infinity" in path.read_text()
    status, err = run_script(TrainSegmentNet.main, ["--config", path])
    assert status == 2 and "scale_max must be a finite number, got inf" in err, err
    assert "warmup_epochs must be a finite number, got nan" in err
    assert not (tmp_path / "run").exists()




def test_missing_prepared_dataset(tmp_path):
    status, err = run_script(TrainSegmentNet.main, train_args(tmp_path / "nothing", tmp_path / "run"))
    assert status == 2 and "dataset.json not found: run DataSeparate.py first" in err, err
    assert not (tmp_path / "run").exists()


def copied_dataset(source: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(source / "voc2012", tmp_path / "data" / "voc2012")
    return tmp_path / "data"


def damaged_dataset_json(kind: str, info: dict):
    if kind == "not JSON":
        return '{"num_classes": 21, "classes": ['
    if kind == "a list":
        return [info]
    if kind == "num_classes as text":
        return info | {"num_classes": "21"}
    if kind == "too few class names":
        return info | {"classes": info["classes"][:3]}
    if kind == "mean missing":
        return {k: v for k, v in info.items() if k != "mean"}
    if kind == "std of zero":
        return info | {"std": [0, 0.2, 0.2]}
    if kind == "pixel counts as text":
        return info | {"pixel_counts": {"train": "many"}}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,message", [
    ("not JSON", "it is not valid JSON (Expecting value"),
    ("a list", "it holds a list, not a JSON object"),
    ("num_classes as text", "num_classes must be a whole number from 1 to 255, got '21'"),
    ("too few class names", "classes must be a list of 21 class names"),
    ("mean missing", "mean is missing"),
    ("std of zero", "std must be 3 numbers from 0.0001 to 10.0 (pixels scaled to 0..1), got [0, 0.2, 0.2]"),
    ("pixel counts as text", "pixel_counts must be a JSON object of 21 pixel counts per split"),
])
def test_damaged_dataset_json(tmp_path, tiny_voc, kind, message):
    data = copied_dataset(tiny_voc, tmp_path)
    path = data / "voc2012" / "dataset.json"
    damaged = damaged_dataset_json(kind, json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    status, err = run_script(TrainSegmentNet.main, train_args(data, tmp_path / "run"))
    assert status == 2 and err.startswith(f"error: {path} is damaged: ") and message in err, err
    assert "Run DataSeparate.py again with --force" in err
    assert not (tmp_path / "run").exists()


def test_prepared_split_without_masks(tmp_path, tiny_voc):
    import shutil

    data = copied_dataset(tiny_voc, tmp_path)
    shutil.rmtree(data / "voc2012" / "val" / "masks")
    status, err = run_script(TrainSegmentNet.main, train_args(data, tmp_path / "run"))
    assert status == 2, err
    assert f"error: {data / 'voc2012' / 'val' / 'masks'} not found: the prepared split 'val' has images but no " \
           f"masks, and training needs them" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_labels_beyond_the_classes_in_a_prepared_dataset(tmp_path, tiny_voc, workers):
    data = copied_dataset(tiny_voc, tmp_path)
    mask_path = sorted((data / "voc2012" / "train" / "masks").iterdir())[1]  # (not one of the sample grid's)
    with Image.open(mask_path) as mask:
        labels, palette = np.array(mask), mask.getpalette()
    labels[:5, :5] = 21  # one past the last class
    labels[-3:, -3:] = 40
    spoiled = Image.fromarray(labels, mode="P")
    spoiled.putpalette(palette)
    spoiled.save(mask_path)
    status, err = run_script(TrainSegmentNet.main, train_args(data, tmp_path / "run", workers=workers, crop_size=400))
    assert status == 2, err
    assert f"mask {mask_path.name} holds label values [21, 40], outside the 21 classes of dataset.json (0..20, or " \
           f"255 for 'ignore')" in err
    assert err.rstrip().endswith("(in a data loader worker)") == (workers > 0)
    assert "Traceback" not in err


def test_out_is_an_existing_file(tmp_path, tiny_voc):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, out))
    assert status == 2 and f"error: run folder {out} is an existing file, not a folder; choose another --out" in err
    assert out.read_text() == "mine"


def test_out_holding_files_of_another_kind(tmp_path, tiny_voc):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, out))
    assert status == 2, err
    assert f"error: run folder {out} cannot be used: it holds files that TrainSegmentNet did not write " \
           f"(holiday.jpg)" in err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]
