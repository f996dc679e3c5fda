"""Shared fixtures: small synthetic datasets prepared through the real scripts' code paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"

# The tests' models are tiny: one thread is faster than several (no contention, no thread pool overhead).
torch.set_num_threads(1)


def realdata(sub: str) -> Path:
    """Path of a genuine sample folder in ../shared/realdata, or skip saying why."""
    path = REALDATA / sub
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (CI has ../shared/realdata; a user's clone may not)")
    return path


def make_small_voc(data_dir: Path, counts=None, seed: int = 0) -> Path:
    """Synthetic VOC archive -> DataExtract -> DataSeparate, with few images; returns data_dir."""
    from segmentnet import synthetic
    from segmentnet.archive import extract
    from segmentnet.datasets import voc2012
    from segmentnet.datasets.common import raw_dir, separate

    counts = counts or {"train": 24, "val": 8, "unlabelled": 2}
    archive = synthetic.write_tar(data_dir / "downloads" / voc2012.ARCHIVE.filename,
                                  voc2012.synthetic_files(seed, counts))
    extract(archive, raw_dir(data_dir, voc2012.ARCHIVE), voc2012.ARCHIVE)
    separate(voc2012.DATASET, data_dir, workers=1, progress=False)
    return data_dir


@pytest.fixture(scope="session")
def small_voc(tmp_path_factory) -> Path:
    """A prepared synthetic VOC (24 train / 8 val images) shared by the whole session: read only."""
    return make_small_voc(tmp_path_factory.mktemp("small_voc"))


def tiny_train_config(data_dir: Path, out: Path, **overrides):
    """A TrainSegmentNet.Config that trains in seconds on small_voc."""
    from TrainSegmentNet import Config

    values = dict(data_dir=str(data_dir), out=str(out), model_options={"width": 8, "depth": 2, "blocks": 1},
                  crop_size=48, epochs=1, batch_size=4, workers=0, lr=0.01, progress=False)
    values.update(overrides)
    return Config(**values)


def config_args(cfg) -> list[str]:
    """The command-line flags that give TrainSegmentNet.py the same Config as cfg."""
    import dataclasses
    import json

    args = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        args += [f"--{f.name}", json.dumps(value) if isinstance(value, (bool, dict)) else str(value)]
    return args


def unprivileged() -> list[str]:
    """The command prefix that runs a program without root's right to read and write any file (the
    tests run as root in CI): setpriv dropping those capabilities; [] when not root; skip otherwise."""
    import shutil

    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root, and no setpriv to drop root's right to read and write any file")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def no_hang():
    """A context manager factory: no_hang(seconds) turns a block that blocks longer (e.g. reading a fifo
    without a writer) into a TimeoutError, so that a hang fails the test instead of stopping the suite."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def limit(seconds: int = 20):
        def hung(signum, frame):
            raise TimeoutError(f"blocked for more than {seconds} s")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return limit


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """A test that leaves a handler of SIGTERM or SIGINT installed fails (the training installs its own
    only while it runs): a later fork, such as DataSeparate's pool, would inherit it, and the pool's
    terminate() would then wait forever for a worker that does not end on SIGTERM."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    left = {sig: handler for sig, handler in ((s, signal.getsignal(s)) for s in before) if handler is not before[sig]}
    for sig in left:
        signal.signal(sig, before[sig])
    assert not left, f"the test left signal handlers installed: {left}"
