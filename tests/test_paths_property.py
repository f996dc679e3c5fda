"""Property: whatever names, '..' chains, absolute paths, symlinks and hard links an archive and its
split lists hold, DataExtract and DataSeparate never create, change or read anything outside the
data folder, and each ends in success (exit 0) or one clear error (exit 2), never a traceback.

Each example is a VOC archive (tar or zip): a few genuine pairs plus generated members, split
lists with generated lines, and sometimes links planted in the extracted raw folder by hand. It
runs in a sandbox: the data folder beside decoy 'victim' files (valid images and masks, so that a
tool that reached them would use them) and the downloads folder. Bounded for CI: fixed examples
(derandomize), no example database, about 20 s on two cores.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import tempfile
from pathlib import Path

import numpy as np
from conftest import write_tar_members, write_zip_members
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

import DataExtract
import DataSeparate
from segmentnet.core.cli import call_main
from segmentnet.datasets import voc2012
from segmentnet.preparation import synthetic

ROOT = voc2012.ROOT
SETS = f"{ROOT}/ImageSets/Segmentation"
SANDBOX = "{SANDBOX}"  # stands for the sandbox's absolute path, filled in when an example runs
SIZE = (12, 10)


def jpeg(colour) -> bytes:
    return synthetic.encode(Image.new("RGB", SIZE, colour), "JPEG")


def mask(value: int) -> bytes:
    return synthetic.palette_png(np.full(SIZE[::-1], value, np.uint8), list(voc2012.PALETTE))


GENUINE_IDS = {"train": ["2008_000001", "2008_000002"], "val": ["2008_000003"]}
GENUINE = {}
for _n, _id in enumerate(GENUINE_IDS["train"] + GENUINE_IDS["val"]):
    GENUINE[f"{ROOT}/JPEGImages/{_id}.jpg"] = jpeg((40 * _n, 90, 200))
    GENUINE[f"{ROOT}/SegmentationClass/{_id}.png"] = mask(_n + 1)
DECOYS = {"victim.jpg": jpeg((250, 0, 0)), "victim.png": mask(15), "victim.txt": b"2008_000001\n",
          "outside/victim.jpg": jpeg((0, 250, 0)), "outside/victim.png": mask(7)}

# ----------------------------------------------------------------------------- strategies

part = st.sampled_from(["..", ".", "", "up", "JPEGImages", "SegmentationClass", "victim", "victim.jpg",
                        "victim.png", "outside", "2008_000001.jpg", "a b"]) | st.text("ab.\\/-_", min_size=1, max_size=4)
climb = st.integers(0, 12).map(lambda k: "../" * k)
# A path that leads to the decoys: '..' chains (past the root they stay at the root), absolute.
to_victim = st.one_of(
    st.builds(lambda c, name: c + name, climb, st.sampled_from(["victim", "outside/victim", "outside"])),
    st.sampled_from(["victim", "outside/victim", "outside", ""]).map(lambda name: f"{SANDBOX}/{name}"),
    st.sampled_from(["victim", "outside/victim"]).map(lambda name: "../" * 40 + SANDBOX.lstrip("/") + "/" + name),
)
relative_path = st.lists(part, min_size=1, max_size=5).map("/".join)
member_name = st.one_of(
    relative_path.map(lambda p: f"{ROOT}/{p}"),
    st.sampled_from([f"{ROOT}/JPEGImages", f"{ROOT}/SegmentationClass", ROOT]).flatmap(
        lambda folder: st.builds(lambda p: f"{folder}/{p}", relative_path)),
    to_victim, relative_path,
)
link_target = st.one_of(to_victim, relative_path, st.sampled_from(["..", "../..", "JPEGImages", "../JPEGImages",
                                                                     f"{ROOT}/JPEGImages", "/etc/passwd"]))
member = st.one_of(
    st.tuples(member_name, st.just("file"), st.sampled_from(list(GENUINE.values()) + [b"", b"x", b"\xff\xd8junk"])),
    st.tuples(member_name, st.just("symlink"), link_target),
    st.tuples(member_name, st.just("hardlink"), st.one_of(link_target, st.sampled_from(list(GENUINE)))),
)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


list_line = weighted(
    (4, to_victim), (2, st.builds(lambda c, v: "../up/" + c + v, climb, to_victim)),
    (2, st.sampled_from(GENUINE_IDS["train"] + GENUINE_IDS["val"])),  # again, or in the other split
    (1, relative_path), (1, st.text(max_size=8)), (1, st.just("")),
)
split_list = st.lists(list_line, max_size=2)
planted = st.lists(st.tuples(st.sampled_from([f"{ROOT}/JPEGImages/2008_000001.jpg", f"{ROOT}/JPEGImages",
                                              f"{ROOT}/SegmentationClass/2008_000003.png", f"{SETS}/train.txt"]),
                             to_victim), max_size=1)
example = st.fixed_dictionaries({
    "format": st.sampled_from(["tar", "zip"]),
    "members": st.lists(member, max_size=3),
    "train": split_list, "val": split_list,
    "keep_genuine_lists": st.sampled_from([True, True, True, False]),
    "planted": planted,
    "skip_bad": st.booleans(),
})

# ----------------------------------------------------------------------------- sandbox


def fill(text: str, sandbox: Path) -> str:
    return text.replace(SANDBOX.lstrip("/"), str(sandbox).lstrip("/")).replace(SANDBOX, str(sandbox))


def write_archive(path: Path, fmt: str, members) -> Path:
    """members: (name, kind, payload) with kind file, symlink or hardlink (a zip has no hard links:
    those become symlinks)."""
    if fmt == "tar":
        return write_tar_members(path, members)
    return write_zip_members(path, [(name, "symlink" if kind == "hardlink" else kind, payload)
                                    for name, kind, payload in members])


def tree_state(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under root but `skip`: kind, size, time and content (files) or target (links)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                detail = path.read_bytes()
            else:
                detail = None
            state[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns, detail)
    return state


def run(main, *argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = call_main(main, [str(a) for a in argv])
    return status, err.getvalue()


def check_outcome(status: int, err: str, tool: str) -> None:
    assert status in (0, 2), f"{tool} exited {status}:\n{err}"
    assert "Traceback" not in err, f"{tool}:\n{err}"
    if status == 2:
        assert "error: " in err and err.rstrip().splitlines()[-1].startswith(("error: ", "(pass --skip-bad")), err


def run_example(sandbox: Path, case: dict) -> None:
    for name, payload in DECOYS.items():
        (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        (sandbox / name).write_bytes(payload)
    data, downloads = sandbox / "data", sandbox / "downloads"
    downloads.mkdir()
    lists = {}
    for split in ("train", "val"):
        lines = [fill(line, sandbox) for line in case[split]]
        if case["keep_genuine_lists"]:
            lines = GENUINE_IDS[split] + lines
        lists[f"{SETS}/{split}.txt"] = "\n".join(lines).encode("utf-8", "surrogateescape")
    members = [(name, "file", payload) for name, payload in {**GENUINE, **lists}.items()]
    members += [(fill(name, sandbox), kind, fill(payload, sandbox) if isinstance(payload, str) else payload)
                for name, kind, payload in case["members"]]
    archive = write_archive(downloads / (voc2012.ARCHIVE.filename if case["format"] == "tar" else "voc.zip"),
                            case["format"], members)
    before = tree_state(sandbox, skip=data)

    status, err = run(DataExtract.main, "--archive", archive, "--data-dir", data, "--no-verify")
    check_outcome(status, err, "DataExtract")
    event(f"DataExtract exit {status}")
    raw = data / "raw" / voc2012.ARCHIVE.stem
    if status == 0:  # links a user might add by hand, pointing anywhere
        for where, target in case["planted"]:
            path = raw / where
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(fill(target, sandbox))
    status, err = run(DataSeparate.main, "--data-dir", data, "--workers", 1, *(["--skip-bad"] if case["skip_bad"] else []))
    check_outcome(status, err, "DataSeparate")
    event(f"DataSeparate exit {status}" + (": " + re.sub(r"\S*/\S*", "<path>", err.split("error: ")[-1])[:50] if status else ""))

    assert tree_state(sandbox, skip=data) == before, "something outside the data folder was created or changed"
    out = data / "voc2012"
    assert out.exists() == (status == 0)
    decoys = set(DECOYS.values())
    for path in out.rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file() and path.suffix in (".jpg", ".png"):
            assert path.read_bytes() not in decoys, f"{path} is a copy of a file outside the raw folder"
    assert not list(data.glob(".*partial*")) and not list((data / "raw").glob(".*partial*"))


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=example)
def test_nothing_outside_the_data_folder_is_touched(case):
    with tempfile.TemporaryDirectory(prefix="segmentnet-sandbox-") as folder:
        run_example(Path(folder), case)
