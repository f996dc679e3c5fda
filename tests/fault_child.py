"""Child processes of the fault tests: the training with one fault injected, a save on a full disk
(tests/test_faults.py), a slow separation (tests/test_separate.py) and a slow export (tests/test_export.py).

    FAULT="signal-at-step 3 SIGTERM" python tests/fault_child.py TRAIN-ARGS...
    python tests/fault_child.py --small-disk FOLDER          # FOLDER: a 1 MB file system
    python tests/fault_child.py --slow-separate STARTED DATA-DIR   # touches STARTED when the first pair begins
    python tests/fault_child.py --slow-export STARTED CHECKPOINT SIZES  # touches STARTED when verifying begins

FAULT: signal-at-step N SIGNAL | sleep-at-step N SECONDS | ctrl-c-in-worker SAMPLE | slow-save
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project

import torch  # noqa: E402

from segmentnet.training import data, loops  # noqa: E402


def at_call(function, number: int, action):
    """`function`, with `action()` run at its call number `number` (from 1)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            action()
        return function(*args, **kwargs)

    return wrapped


def install_fault(kind: str, arg: str) -> None:
    if kind == "signal-at-step":  # the main process signals itself during step N
        step, name = arg.split()
        loops.compute_loss = at_call(loops.compute_loss, int(step), lambda: os.kill(os.getpid(), getattr(signal, name)))
    elif kind == "sleep-at-step":  # step N takes a while: the run is busy, with no checkpoint yet
        step, seconds = arg.split()

        def sleep():
            print("sleeping", flush=True)
            time.sleep(float(seconds))

        loops.compute_loss = at_call(loops.compute_loss, int(step), sleep)
    elif kind == "ctrl-c-in-worker":  # a slow loader worker sends SIGINT to the whole process group
        sample = int(arg)                # (as Ctrl-C in a terminal does) while the main process waits for it
        real_getitem, loaded = data.SegmentationDataset.__getitem__, []

        def getitem(self, index):
            if self.split == "train":
                loaded.append(1)
                time.sleep(0.6)
                if len(loaded) == sample:
                    os.killpg(os.getpgrp(), signal.SIGINT)
            return real_getitem(self, index)

        data.SegmentationDataset.__getitem__ = getitem
    elif kind == "slow-save":  # torch.save writes slowly, so that a SIGKILL can land in the middle
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            payload = buffer.getvalue()
            print("slow save started", flush=True)
            for start in range(0, len(payload), 8192):
                f.write(payload[start:start + 8192])
                f.flush()
                time.sleep(0.05)

        torch.save = save
    else:
        raise SystemExit(f"unknown FAULT {kind!r}")


def train_with_fault(argv: list[str]) -> int:
    import TrainSegmentNet
    from segmentnet.core.cli import call_main

    torch.set_num_threads(1)  # as the test process does: the same arithmetic, bit for bit
    kind, _, arg = os.environ["FAULT"].partition(" ")
    install_fault(kind, arg)
    return call_main(TrainSegmentNet.main, argv)


def save_on_a_small_disk(folder: str) -> int:
    """Save 240 kB, then 1000 kB more into a 1 MB file system; print what happened as JSON."""
    from segmentnet.core.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint

    last = os.path.join(folder, "last.pt")
    first = {"model": {"w": torch.arange(60_000, dtype=torch.float32)}}  # 240 kB
    save_checkpoint(first, last)
    report = {"error": None}
    try:
        save_checkpoint({"model": {"w": torch.zeros(250_000)}}, last)  # 1000 kB more do not fit in 1 MB
    except CheckpointWriteError as exc:
        report["error"] = str(exc)
    report["kept"] = torch.equal(load_checkpoint(last)["model"]["w"], first["model"]["w"])
    report["files"] = sorted(os.listdir(folder))
    print(json.dumps(report))
    return 0


SLOW = {}  # the slow separation's flag file and the real conversion (module level: the pool pickles slow_convert)


def slow_convert(*args):
    Path(SLOW["started"]).touch()
    time.sleep(0.3)
    return SLOW["convert"](*args)


def slow_separation(started: str, data_dir: str) -> int:
    """DataSeparate with one worker whose pairs take 0.3 s each; `started` is touched as the first begins."""
    import DataSeparate
    from segmentnet.core.cli import call_main
    from segmentnet.datasets import separate

    SLOW.update(started=started, convert=separate._convert_pair)
    separate._convert_pair = slow_convert
    return call_main(DataSeparate.main, ["--data-dir", data_dir, "--workers", "1"])


def slow_export(started: str, checkpoint: str, check_sizes: str) -> int:
    """Export.py whose verification waits: `started` is touched once the unverified file is written."""
    import Export
    from segmentnet.core.cli import call_main
    from segmentnet.deployment import export

    real_verify = export.verify

    def verify(*args, **kwargs):
        Path(started).touch()
        time.sleep(60)
        return real_verify(*args, **kwargs)

    export.verify = verify
    return call_main(Export.main, [checkpoint, "--check-sizes", check_sizes])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--slow-export"]:
        sys.exit(slow_export(*sys.argv[2:5]))
    if sys.argv[1:2] == ["--small-disk"]:
        sys.exit(save_on_a_small_disk(sys.argv[2]))
    if sys.argv[1:2] == ["--slow-separate"]:
        sys.exit(slow_separation(sys.argv[2], sys.argv[3]))
    sys.exit(train_with_fault(sys.argv[1:]))
