"""DistributedDataParallel on CPU (gloo): two processes train and validate as one process does.

The equivalence test forks its two ranks from this process (torch is already imported, so they
start at once); the torchrun test runs TrainSegmentNet.py itself, as a user would.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_train_config
from groupnorm_train import segmentnet_groupnorm

from segmentnet.core.checkpoint import load_checkpoint
from segmentnet.core.distributed import DistEnv
from segmentnet.core.errors import ConfigError
from segmentnet.core.files import OWNER_FILE
from segmentnet.models import MODELS, build_model
from segmentnet.training.data import EpochSampler, SegmentationDataset
from segmentnet.training.engine import _train, train
from segmentnet.training.loops import evaluate
from segmentnet.training.losses import build_loss
from segmentnet.training.runs import LOCK_FILE
from segmentnet.training.transforms import eval_transform

RUN_FILES = {OWNER_FILE, LOCK_FILE, "config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png",
             "samples"}  # rank 0 only


@contextmanager
def one_thread():
    """As each rank runs (torchrun sets OMP_NUM_THREADS=1); also much faster on a crowded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, runs: list) -> None:
    """One forked rank: the torchrun environment, then each (config, port) run in turn."""
    code = 0
    try:
        torch.set_num_threads(1)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                          MASTER_ADDR="127.0.0.1")
        for cfg, port in runs:
            os.environ["MASTER_PORT"] = str(port)
            train(cfg)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)  # never run the parent's (pytest's) exit handlers


def run_ranks(world_size: int, runs: list, timeout: float = 240) -> None:
    context = get_context("fork")
    procs = [context.Process(target=_rank_main, args=(rank, world_size, runs)) for rank in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * world_size, "a rank failed or hung (its traceback is above)"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(sys.platform == "win32" or not torch.distributed.is_available(), reason="needs fork and gloo")
def test_two_ranks_with_grad_accum_equal_one_process_and_resume(ddp_voc, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "segmentnet_gn", segmentnet_groupnorm)
    common = dict(model="segmentnet_gn", loss="ce", optimizer="sgd", lr=0.05, warmup_epochs=0, poly_power=0,
                  pad=False, epochs=2)  # a constant learning rate: the schedule does not depend on `epochs`
    with one_thread():
        train(tiny_train_config(ddp_voc, tmp_path / "one", batch_size=4, **common))

    # 2 ranks x 1 image x 2 accumulated micro-batches: the same 4 images per optimiser step. The
    # first epoch, then a resume from its checkpoint for the second.
    per_rank = dict(common, batch_size=1, grad_accum=2)
    run_ranks(2, [(tiny_train_config(ddp_voc, tmp_path / "two", **dict(per_rank, epochs=1)), free_port()),
                  (tiny_train_config(ddp_voc, "", resume=str(tmp_path / "two" / "last.pt"), **per_rank),
                   free_port())])

    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES  # rank 1 wrote nothing, no leftovers
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert two["epoch"] == 2 and not any(k.startswith(("module.", "_orig_mod.")) for k in two["model"])
    torch.manual_seed(0)
    initial = build_model("segmentnet_gn", 21, width=8, depth=2, blocks=1).state_dict()
    for key, weight in one["model"].items():
        # The same sums taken in another order (per rank, then all-reduced) leave float32 rounding
        # differences, about 2e-7 here after 8 steps; a real fault (ranks on wrong samples, gradients
        # not averaged, or samples with unequal labelled pixel counts) gives 1e-2 and more.
        torch.testing.assert_close(two["model"][key], weight, rtol=1e-4, atol=1e-5, msg=key)
    moved = max(float((one["model"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-2
    assert [r["epoch"] for r in records(tmp_path / "two")] == [1, 2]
    for a, b in zip(records(tmp_path / "one"), records(tmp_path / "two")):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def torchrun_command() -> list[str]:
    """The torchrun installed next to this Python (the venv's), else the same module through python -m."""
    torchrun = Path(sys.executable).parent / "torchrun"
    return [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]


def single_process_scores(data: Path, state: dict, indices=None) -> dict:
    """Validation of a checkpoint in this process (one thread, as each torchrun rank has)."""
    dataset = SegmentationDataset(data / "voc2012", "val", eval_transform())
    sampler = EpochSampler(len(dataset), shuffle=False, pad=False)
    subset = indices if indices is not None else list(range(len(dataset)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=[(0, i) for i in subset] if indices
                                         else sampler, collate_fn=lambda b: (b[0][0][None], b[0][1][None]))
    model = build_model(state["model_name"], state["num_classes"], **state["model_options"])
    model.load_state_dict(state["model"])
    with one_thread():
        return evaluate(model, loader, state["num_classes"], DistEnv(), state["mean"], state["std"],
                        build_loss(state["config"]["loss"]))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not torch.distributed.is_available(), reason="needs gloo")
def test_torchrun_two_processes_validate_like_one(ddp_voc, tmp_path):
    out = tmp_path / "run"
    command = torchrun_command() + [
        "--standalone", "--nproc_per_node=2", str(ROOT / "TrainSegmentNet.py"), "--data-dir", str(ddp_voc),
        "--out", str(out), "--model-options", '{"width": 8, "depth": 2, "blocks": 1}', "--crop-size", "48",
        "--epochs", "1", "--batch-size", "2", "--workers", "0", "--lr", "0.01", "--progress", "false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "destroy_process_group" not in result.stderr  # torch warns when a process group is left open
    assert result.stdout.count("epoch 1/1:") == 1 and "2 process(es)" in result.stdout  # only rank 0 prints
    assert {p.name for p in out.iterdir()} == RUN_FILES
    state = load_checkpoint(out / "last.pt")
    assert not any(k.startswith("module.") for k in state["model"])

    # The run's validation (7 images sharded 4 + 3, confusion matrices all-reduced, batch-norm
    # statistics taken from rank 0) equals validating its checkpoint on all 7 in one process.
    record = records(out)[0]
    assert 0 <= record["data_wait_fraction"] < 1
    scores = single_process_scores(ddp_voc, state)
    assert record["val_per_class_iou"] == scores["per_class_iou"]
    assert (record["val_miou"], record["val_pixel_acc"]) == (scores["miou"], scores["pixel_acc"])
    assert record["val_loss"] == pytest.approx(scores["loss"], rel=1e-5)
    rank0_only = single_process_scores(ddp_voc, state, indices=[0, 2, 4, 6])
    assert rank0_only["confusion"] != scores["confusion"]  # so the comparison above can tell


def test_sync_bn_on_cpu_is_refused_with_a_reason(tmp_path):
    cfg = tiny_train_config(tmp_path, tmp_path / "run", sync_bn=True, device="cpu")
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        _train(cfg, DistEnv(rank=0, world_size=2))


def test_checkpointed_weights_have_no_wrapper_prefixes():
    from torch import nn

    from segmentnet.core.distributed import unwrap

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())  # what a naive save would write
    assert unwrap(compiled) is model and set(unwrap(compiled).state_dict()) == set(model.state_dict())
