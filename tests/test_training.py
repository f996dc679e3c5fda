"""Training loop: a short run writes its outputs, and resuming gives the same weights."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_train_config
from segmentnet.checkpoint import load_checkpoint
from segmentnet.config import ConfigError
from segmentnet.engine import train


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


@pytest.mark.parametrize("amp_dtype", ["auto", "float16"])  # fp32 on CPU; fp16 autocast with a gradient scaler
def test_interrupted_and_resumed_equals_uninterrupted(small_voc, tmp_path, monkeypatch, amp_dtype):
    from segmentnet import engine

    train(tiny_train_config(small_voc, tmp_path / "full", epochs=3, amp_dtype=amp_dtype))
    full = load_checkpoint(tmp_path / "full" / "last.pt")

    # A crash during epoch 2 (in its validation): last.pt still holds the end of epoch 1.
    real_evaluate, calls = engine.evaluate, []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", crash_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(small_voc, tmp_path / "part", epochs=3, amp_dtype=amp_dtype))
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
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


def test_resume_refuses_a_checkpoint_of_another_model(small_voc, tmp_path):
    from segmentnet.archive import DataError

    train(tiny_train_config(small_voc, tmp_path / "run"))
    cfg = tiny_train_config(small_voc, "", resume=str(tmp_path / "run" / "last.pt"), epochs=2,
                            model_options={"width": 4, "depth": 2, "blocks": 1})
    with pytest.raises(DataError, match="model_options"):
        train(cfg)


@pytest.mark.parametrize("field,value,message", [
    ("lr", 0.0, "lr must be"), ("batch_size", 0, "batch_size must be"), ("model", "nope", "choices"),
    ("loss", "dice?", "choices"), ("epochs", 0, "epochs must be"),
    ("amp_dtype", "fp8", "amp_dtype 'fp8' is unknown; choices: auto, bfloat16, float16"),
    ("workers", -2, r"workers must be >= 0 \(or -1 for one per CPU core\), got -2"),
])
def test_impossible_hyperparameters_rejected_before_work(tmp_path, field, value, message):
    cfg = tiny_train_config(tmp_path / "no-data-here", tmp_path / "run", **{field: value})
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("requested,cores,local_world_size,expected", [
    (-1, 16, None, 8),   # one process on a 16-core GPU box: capped at 8
    (-1, 16, "4", 4),    # torchrun with 4 processes on the node share the cores
    (-1, 2, None, 2),
    (-1, 1, "2", 1),     # never 0 by default: loading would then stall the step itself
    (3, 16, None, 3),    # an explicit count is kept
    (0, 16, None, 0),
])
def test_default_loader_workers_share_the_cores(monkeypatch, requested, cores, local_world_size, expected):
    from segmentnet.engine import loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert loader_workers(requested) == expected
