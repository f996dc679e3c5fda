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
    from segmentnet.datasets import voc2012
    from segmentnet.datasets.common import raw_dir
    from segmentnet.datasets.separate import separate
    from segmentnet.preparation import synthetic
    from segmentnet.preparation.extraction import extract

    counts = counts or {"train": 24, "val": 8, "unlabelled": 2}
    archive = synthetic.write_tar(data_dir / "downloads" / voc2012.ARCHIVE.filename,
                                  voc2012.synthetic_files(seed, counts))
    extract(archive, raw_dir(data_dir, voc2012.ARCHIVE), voc2012.ARCHIVE)
    separate(voc2012.DATASET, data_dir, workers=1, progress=False)
    return data_dir


# The prepared synthetic VOC sets, each made once per test process and shared: read only (a test that
# changes a dataset copies it first).


@pytest.fixture(scope="session")
def small_voc(tmp_path_factory) -> Path:
    """24 train / 8 val / 2 unlabelled images."""
    return make_small_voc(tmp_path_factory.mktemp("small_voc"))


@pytest.fixture(scope="session")
def smaller_voc(tmp_path_factory) -> Path:
    """8 train / 2 val / 1 unlabelled images: 4 steps of 2 per epoch, or eleven trainings in little time."""
    return make_small_voc(tmp_path_factory.mktemp("smaller_voc"), counts={"train": 8, "val": 2, "unlabelled": 1})


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory) -> Path:
    """4 train / 1 val images: enough for the checks that stop a training before its first step."""
    return make_small_voc(tmp_path_factory.mktemp("tiny_voc"), counts={"train": 4, "val": 1, "unlabelled": 0})


@pytest.fixture(scope="session")
def ddp_voc(tmp_path_factory) -> Path:
    """16 train images whose masks have no ignored pixel, and 7 val images (an odd count: uneven shards).

    With every training pixel labelled, each sample adds the same number of pixels to the mean
    cross-entropy, so the mean over ranks of per-rank means is the mean over the global batch.
    """
    import numpy as np
    from PIL import Image

    data = make_small_voc(tmp_path_factory.mktemp("ddp_voc"), counts={"train": 16, "val": 7, "unlabelled": 1})
    for path in (data / "voc2012" / "train" / "masks").iterdir():
        with Image.open(path) as mask:
            array, palette = np.array(mask), mask.getpalette()
        array[array == 255] = 0
        labelled = Image.fromarray(array, mode="P")
        labelled.putpalette(palette)
        labelled.save(path)
    return data


@pytest.fixture
def two_conv_registered(monkeypatch):
    """results_helpers.TwoConvNet registered as the model "two_conv" for one test (MODELS is restored)."""
    from results_helpers import TwoConvNet

    from segmentnet.models import MODELS

    monkeypatch.setitem(MODELS, "two_conv", TwoConvNet)


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


# ----------------------------------------------------------------------------- running the scripts


def run_script(main, argv) -> tuple[int, str]:
    """A script's main(argv) through segmentnet.core.cli.call_main, as `python Script.py argv` runs it:
    (exit status, what it wrote to stderr); its stdout is dropped."""
    import contextlib
    import io

    from segmentnet.core.cli import call_main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = call_main(main, [str(a) for a in argv])
    return status, stderr.getvalue()


def script_process(script: str, *args, cwd: Path):
    """`python Script.py args` as a process of its own (its real exit status): subprocess.CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def train_args(data: Path, out: Path, **overrides) -> list[str]:
    """TrainSegmentNet.py's flags for tiny_train_config (batch 2, which tiny_voc's 4 images hold)."""
    return config_args(tiny_train_config(data, out, **{"batch_size": 2, **overrides}))


# ----------------------------------------------------------------------------- the synthetic VOC archive

from segmentnet.datasets import voc2012  # noqa: E402  (after the path set-up above)

VOC = voc2012.ARCHIVE
SETS = f"{voc2012.ROOT}/ImageSets/Segmentation"
TINY_COUNTS = {"train": 3, "val": 1, "unlabelled": 0}


def leftovers(data: Path) -> list[str]:
    """What an extraction left under data/: any file or link, or the target folder itself."""
    if not data.exists():
        return []
    found = [p for p in data.rglob("*") if p.is_file() or p.is_symlink() or p == data / "raw" / VOC.stem]
    return sorted(str(p.relative_to(data)) for p in found)


def write_tar_members(path: Path, members) -> Path:
    """A tar of (name, kind, payload) members written as given, hostile ones included."""
    import io
    import tarfile

    kinds = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload if isinstance(payload, str) else ""
                tar.addfile(info)
    return path


def write_zip_members(path: Path, members) -> Path:
    """A zip of (name, kind, payload) members, kinds told by their Unix mode bits, written as given."""
    import stat
    import warnings
    import zipfile

    types = {"file": stat.S_IFREG, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO, "device": stat.S_IFCHR}
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = (types[kind] | 0o644) << 16
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it
                zf.writestr(info, payload.encode() if isinstance(payload, str) else payload)
    return path


def png_declaring(width: int, height: int, rgb: bool = False) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height pixels (greyscale, or RGB)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """An RGB PNG file declaring width x height pixels: a decompression bomb."""
    path.write_bytes(png_declaring(width, height, rgb=True))
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: in `make test-all` (and CI) only, not in the quick `make test`")
