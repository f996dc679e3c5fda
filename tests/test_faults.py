"""Faults during training: each leaves the run resumable, with nothing lost.

Signals are real signals to a real child process. To make one land at a chosen moment, the child
runs TrainSegmentNet through LAUNCHER below, which reads a FAULT plan from the environment and
wraps a function of the training (the loss, a data sample, torch.save) to act at that moment.
The hooks live only here: production code has none.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import config_args, tiny_train_config

import TrainSegmentNet
from segmentnet.core.checkpoint import load_checkpoint
from segmentnet.core.cli import call_main
from segmentnet.core.files import OWNER_FILE
from segmentnet.training import engine, loops
from segmentnet.training.engine import train
from segmentnet.training.runs import LOCK_FILE

FAULT_CHILD = Path(__file__).resolve().parent / "fault_child.py"  # the training with a fault injected, a full disk


@pytest.fixture(scope="module")
def launcher() -> Path:
    return FAULT_CHILD


def config(data: Path, out, **overrides):
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    return tiny_train_config(data, out, **{"batch_size": 2, "epochs": 2, **overrides})


def start_child(launcher: Path, cfg, fault: str, **popen) -> subprocess.Popen:
    # A session of its own: a signal to "the whole process group" stays inside the child and its workers.
    return subprocess.Popen([sys.executable, str(launcher), *config_args(cfg)], env={**os.environ, "FAULT": fault},
                            start_new_session=True, text=True, **popen)


def run_child(launcher: Path, cfg, fault: str) -> subprocess.CompletedProcess:
    child = start_child(launcher, cfg, fault, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def kill_during_checkpoint_write(launcher: Path, cfg, run_dir: Path) -> int:
    """Start a child whose saves are slow; SIGKILL it once a checkpoint is partly written."""
    child = start_child(launcher, cfg, "slow-save", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in child.stdout:
            if line.startswith("slow save started"):
                break
        deadline = time.time() + 120
        while not any(p.stat().st_size > 0 for p in run_dir.glob(".last.pt.tmp-*")):
            assert child.poll() is None and time.time() < deadline, "the child never started writing last.pt"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        return child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.stdout.close()


def metrics(run_dir: Path) -> list[dict]:
    keep = ("epoch", "train_loss", "val_loss", "val_miou", "lr", "nonfinite_steps")
    return [{k: json.loads(line)[k] for k in keep} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_signals_and_sigkill_leave_a_run_that_resumes_to_the_same_result(smaller_voc, launcher, tmp_path):
    train(config(smaller_voc, tmp_path / "full"))
    full = load_checkpoint(tmp_path / "full" / "last.pt")

    run = tmp_path / "run"
    last = run / "last.pt"

    # 1. Preemption: SIGTERM during step 3 of epoch 1. The step finishes, last.pt is saved, exit 128+15.
    result = run_child(launcher, config(smaller_voc, run), "signal-at-step 3 SIGTERM")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert f"stopped by signal {int(signal.SIGTERM)} at epoch 1, batch 3" in result.stderr
    assert f"continue with --resume {last}" in result.stderr
    state = load_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)

    # 2. Resumed with a loader worker; Ctrl-C reaches every process of the group while the main
    #    process waits for the worker (the 5th sample it loads is epoch 2's batch 2).
    result = run_child(launcher, config(smaller_voc, "", resume=last, workers=1), "ctrl-c-in-worker 5")
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert f"stopped by signal {int(signal.SIGINT)} at epoch 2, batch 2" in result.stderr
    state = load_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    before_kill = last.read_bytes()

    # 3. Resumed again and killed with SIGKILL while writing last.pt at the end of epoch 2.
    status = kill_during_checkpoint_write(launcher, config(smaller_voc, "", resume=last), run)
    assert status == -signal.SIGKILL
    assert last.read_bytes() == before_kill, "the previous checkpoint was damaged"
    state = load_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)

    # 4. Resumed to the end: the same weights and the same records as the run that was never stopped.
    train(config(smaller_voc, "", resume=last))
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 2 and resumed["model"].keys() == full["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert metrics(run) == metrics(tmp_path / "full")
    assert not list(run.glob(".*.tmp-*")), "the killed write's temporary file was not cleaned up"


class DiskFullAfter:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(capsys, smaller_voc, tmp_path, monkeypatch):
    from segmentnet.core import checkpoint

    opened = []

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        opened.append(Path(path).name)
        return DiskFullAfter(file, 50_000) if len(opened) == 3 else file  # epoch 2's last.pt

    monkeypatch.setattr(checkpoint, "open", open_on_a_filling_disk, raising=False)
    run = tmp_path / "run"
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"error: could not write checkpoint {run / 'last.pt'}: No space left on device (ENOSPC); " \
           f"the previous last.pt is untouched" in err
    assert [name.split(".tmp-")[0] for name in opened] == [".last.pt", ".best.pt", ".last.pt"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == sorted([OWNER_FILE, LOCK_FILE, "best.pt", "config.json", "curves.png",
                                                           "last.pt", "metrics.jsonl", "samples"])

    monkeypatch.undo()  # space freed: the run continues
    train(config(smaller_voc, "", resume=run / "last.pt"))
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_disk_full_on_a_real_one_megabyte_filesystem(tmp_path):
    """A tmpfs of 1 MB, mounted in a private mount namespace (root, or an unprivileged user namespace)."""
    if not (shutil.which("unshare") and shutil.which("mount")):
        pytest.skip("unshare or mount missing: test_disk_full_during_a_save_keeps_the_previous_checkpoint "
                    "covers this with an injected ENOSPC")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): "
                    f"test_disk_full_during_a_save_keeps_the_previous_checkpoint covers this with an injected ENOSPC")
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$4" "$1"', "sh",
         str(small), sys.executable, str(FAULT_CHILD), "--small-disk"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["error"] is not None and "No space left on device (ENOSPC)" in report["error"]
    assert "the previous last.pt is untouched" in report["error"]
    assert report["kept"] is True
    assert report["files"] == ["last.pt"], "the failed write's temporary file was left, filling the disk"


def loss_becomes_nan_at(call: int, monkeypatch) -> None:
    real, calls = loops.compute_loss, []

    def compute_loss(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == call else loss

    monkeypatch.setattr(loops, "compute_loss", compute_loss)


def test_nonfinite_loss_stops_naming_the_step(capsys, smaller_voc, tmp_path, monkeypatch):
    loss_becomes_nan_at(6, monkeypatch)
    run = tmp_path / "run"
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "error: loss is nan at step 6 (epoch 2, batch 2): lower lr, check the data, or set skip_nonfinite true" in " ".join(err.split())
    state = load_checkpoint(run / "last.pt")  # the last finished epoch, untouched
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_skip_nonfinite_skips_the_step_and_counts_it(smaller_voc, tmp_path, monkeypatch):
    loss_becomes_nan_at(2, monkeypatch)
    summary = train(config(smaller_voc, tmp_path / "run", epochs=1, skip_nonfinite=True))
    assert summary["nonfinite_steps"] == 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["nonfinite_steps"] == 1 and state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert metrics(tmp_path / "run")[0]["nonfinite_steps"] == 1


def test_out_of_memory_says_which_settings_to_lower(capsys, smaller_voc, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 15.77 GiB of which 1.02 GiB is free.\nmore details")

    monkeypatch.setattr(loops, "compute_loss", out_of_memory)
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, tmp_path / "a", amp=False)))
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: out of GPU memory during training in epoch 1, after 0 steps: CUDA out of memory. "
                          "Tried to allocate 2.00 GiB")
    for advice in ("lower batch_size 2 (and raise grad_accum, now 1, by the same factor", "lower crop_size 48",
                   "set amp true", "set channels_last true", "smaller model"):
        assert advice in err

    monkeypatch.undo()
    monkeypatch.setattr(engine, "evaluate", out_of_memory)
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, tmp_path / "b", amp=True)))
    err = capsys.readouterr().err
    assert status == 2 and "out of GPU memory during validation in epoch 1, after 4 steps" in err, err
    assert "there only amp or a smaller model helps" in err
    assert "set amp true" not in err  # (it is on already)


def test_signal_during_validation_stops_at_the_epoch_end(capsys, smaller_voc, tmp_path, monkeypatch):
    real_evaluate = engine.evaluate

    def evaluate_then_signal(*args, **kwargs):
        handler = signal.getsignal(signal.SIGTERM)
        # Only while the training's own handler is installed: otherwise SIGTERM would end pytest itself.
        assert isinstance(getattr(handler, "__self__", None), loops.StopRequest), handler
        signal.raise_signal(signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate_then_signal)
    run = tmp_path / "run"
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    assert status == 128 + signal.SIGTERM
    assert f"stopped by signal {int(signal.SIGTERM)} at epoch 2, batch 0" in capsys.readouterr().err
    state = load_checkpoint(run / "last.pt")  # epoch 1 whole, validated and recorded; not a step of epoch 2
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert [record["epoch"] for record in metrics(run)] == [1]


def test_failing_loader_worker_names_the_sample(capsys, smaller_voc, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smaller_voc / "voc2012", data / "voc2012")
    images = sorted((data / "voc2012" / "train" / "images").iterdir())
    bad = images[5]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    status = call_main(TrainSegmentNet.main, config_args(config(data, tmp_path / "run", workers=1)))
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"error: sample 5 of {data / 'voc2012' / 'train'}: cannot decode {bad.name}" in err
    assert "image file is truncated" in err and err.rstrip().endswith("(in a data loader worker)")
    assert "Traceback" not in err


def test_a_second_training_into_a_busy_folder_is_refused_and_a_dead_ones_lock_does_not_block(
        capsys, smaller_voc, launcher, tmp_path):
    run = tmp_path / "run"
    child = start_child(launcher, config(smaller_voc, run), "sleep-at-step 1 300", stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
    try:
        for line in child.stdout:  # it holds the folder and is inside its first step
            if line.startswith("sleeping"):
                break
        status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
        err = capsys.readouterr().err
        assert status == 2, err
        assert f"error: run folder {run} is in use: another training (pid {child.pid} on " in err
        assert "Wait for it to finish (or stop it), or choose another --out" in err
        assert not (run / "last.pt").exists()
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # dies holding the lock, before its first checkpoint
        child.wait(timeout=60)
        child.stdout.close()
    # Its lock went with it; the folder it left (config.json, no checkpoint) is taken for the new run.
    assert sorted(p.name for p in run.iterdir()) == sorted([OWNER_FILE, LOCK_FILE, "config.json"])
    killed_id = json.loads((run / "config.json").read_text())["run_id"]
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "stopped before its first checkpoint: starting over there" in out
    assert load_checkpoint(run / "last.pt")["run_id"] != killed_id
    assert [record["epoch"] for record in metrics(run)] == [1, 2]


def test_a_run_that_fails_before_its_first_checkpoint_says_so_and_its_folder_is_reused(
        capsys, smaller_voc, tmp_path, monkeypatch):
    loss_becomes_nan_at(2, monkeypatch)
    run = tmp_path / "run"
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    err = " ".join(capsys.readouterr().err.split())
    assert status == 2, err
    assert f"then run the same command again: the run folder {run} holds no checkpoint yet, so a new run starts " \
           f"over in it" in err
    assert "last.pt" not in err
    monkeypatch.undo()
    assert call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run))) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_half_written_metrics_line_does_not_block_resume(capsys, smaller_voc, tmp_path):
    run = tmp_path / "run"
    train(config(smaller_voc, run, epochs=1))
    with open(run / "metrics.jsonl", "a") as f:  # killed while appending the next epoch's record
        f.write('{"epoch": 2, "train_loss": 0.5, "val_lo')
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, "", resume=run / "last.pt")))
    err = capsys.readouterr().err
    assert status == 0, err
    assert "left out 1 line(s) that are not complete records" in err
    assert [record["epoch"] for record in metrics(run)] == [1, 2]


@pytest.mark.parametrize("code,advice", [
    (errno.ENOSPC, "Free space on that disk or choose another folder"),
    (errno.EDQUOT, "Free space on that disk or choose another folder"),
    (errno.EACCES, "No permission to write in {folder}"),
    (errno.EROFS, "{folder} is on a read-only file system"),
])
def test_a_failed_save_says_what_failed(tmp_path, monkeypatch, code, advice):
    from segmentnet.core import checkpoint

    def refuse(path, mode="r", *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(checkpoint, "open", refuse, raising=False)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        checkpoint.save_checkpoint({"model": {}}, tmp_path / "last.pt")
    message = str(info.value)
    assert f"({errno.errorcode[code]}); nothing was kept. {advice.format(folder=tmp_path)}" in message
    assert ("Free space" in message) == (code in (errno.ENOSPC, errno.EDQUOT))
    # No last.pt there: no --resume of one (a run that fails before its first checkpoint starts over)
    assert message.endswith("then run again (a training run that has no checkpoint yet starts over)"), message


def test_a_save_into_a_missing_folder_or_onto_a_folder_is_not_called_a_full_disk(tmp_path):
    from segmentnet.core.checkpoint import CheckpointWriteError, save_checkpoint

    gone = tmp_path / "gone"
    with pytest.raises(CheckpointWriteError) as missing:
        save_checkpoint({"model": {}}, gone / "last.pt")
    assert f"(ENOENT); nothing was kept. The folder {gone} does not exist" in str(missing.value)
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(CheckpointWriteError) as folder:
        save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert f"(EISDIR); nothing was kept. {tmp_path / 'last.pt'} is a folder, where the file must be written" in \
        str(folder.value)
    assert "Free space" not in str(missing.value) and "Free space" not in str(folder.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_run_folder_removed_during_the_run(capsys, smaller_voc, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_evaluate = engine.evaluate

    def evaluate_then_remove_the_folder(*args, **kwargs):
        shutil.rmtree(run)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate_then_remove_the_folder)
    status = call_main(TrainSegmentNet.main, config_args(config(smaller_voc, run)))
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"error: could not write {run / 'metrics.jsonl'}: No such file or directory (ENOENT); The folder {run} " \
           f"does not exist" in err
    assert "Free space" not in err and "Traceback" not in err
