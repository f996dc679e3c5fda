"""The shared file-safety mechanism: plain names, staying inside a folder, atomic writes, ownership."""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

from segmentnet.core.errors import DataError
from segmentnet.core.files import OWNER_FILE, atomic_path, check_inside, child, claim_folder, owner_of, plain_name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "/etc/passwd", "a\\b", "a\x00b", "x" * 256])
def test_plain_name_refuses_anything_but_one_component(name):
    with pytest.raises(DataError, match="train.txt line 3"):
        plain_name(name, "train.txt line 3")


@pytest.mark.parametrize("name", ["2007_000032", "a b", "..x", "x..", "é", "-n"])
def test_plain_name_accepts_ordinary_names(name):
    assert plain_name(name, "here") == name


def test_child_refuses_a_path_through_a_link_out(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir(), outside.mkdir()
    (inside / "up").symlink_to(outside)
    (inside / "file.jpg").symlink_to(outside / "victim.jpg")
    with pytest.raises(DataError, match="outside"):
        child(inside, "file", "list", ".jpg")
    with pytest.raises(DataError, match="outside"):
        check_inside(inside, inside / "up" / "x", "list")
    assert child(inside, "ok", "list", ".jpg") == inside / "ok.jpg"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_claim_folder_takes_new_empty_or_own_folders_only(tmp_path):
    new = claim_folder(tmp_path / "new", "Predict")
    assert owner_of(new)["tool"] == "Predict"
    assert claim_folder(new, "Predict") == new            # its own: accepted again
    with pytest.raises(DataError, match="written by Predict, not Report"):
        claim_folder(new, "Report")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_folder(empty, "Predict") == empty
    users = tmp_path / "users"
    users.mkdir()
    (users / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(DataError, match="did not write"):
        claim_folder(users, "Predict")
    assert sorted(os.listdir(users)) == ["photo.jpg"]       # nothing added
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="existing file"):
        claim_folder(tmp_path / "afile", "Predict")
    (users / OWNER_FILE).write_text("{not json")
    with pytest.raises(DataError, match="did not write"):  # a corrupt record is no ownership
        claim_folder(users, "Predict")


def test_claim_folder_refuses_a_link_to_nothing(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a link to .*nowhere, which does not exist"):
        claim_folder(tmp_path / "out", "Predict", "--out")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (tmp_path / "out").is_symlink()


def test_writing_into_a_claimed_folder_never_goes_through_a_link(tmp_path):
    from segmentnet.core.outputs import writing_into

    out, truth = claim_folder(tmp_path / "pred", "Predict"), tmp_path / "data" / "voc2012" / "val" / "masks"
    truth.mkdir(parents=True)
    (tmp_path / "data" / "voc2012" / "dataset.json").write_text("{}")
    (truth / "a.png").write_bytes(b"ground truth")
    (out / "masks").symlink_to(truth)                         # planted in the tool's own folder
    with pytest.raises(DataError, match=f"{out / 'masks'} is a link"):
        with writing_into(out, "masks/a.png", "--out") as path:
            path.write_bytes(b"prediction")
    (out / "masks").unlink()
    (out / "masks").mkdir()
    (out / "masks" / "a.png").symlink_to(truth / "a.png")     # the file itself
    with pytest.raises(DataError, match="is a link"):
        with writing_into(out, "masks/a.png", "--out") as path:
            path.write_bytes(b"prediction")
    assert (truth / "a.png").read_bytes() == b"ground truth"
    with writing_into(out, "overlays/b.png", "--out") as path:  # a new subfolder is made
        path.write_bytes(b"picture")
    assert (out / "overlays" / "b.png").read_bytes() == b"picture"


def test_extracted_data_counts_as_input_data(tmp_path):
    from segmentnet.core.outputs import input_data_folder, refuse_input_data
    from segmentnet.core.outputs import MARKER

    raw = tmp_path / "data" / "raw" / "VOCtrainval_11-May-2012"
    raw.mkdir(parents=True)
    (raw / MARKER).write_text("{}")                           # DataExtract's marker, its only mark
    assert input_data_folder(raw / "VOCdevkit" / "x") == raw.resolve()
    with pytest.raises(DataError, match=f"--out {raw / 'pred'} is inside the extracted data {raw.resolve()}"):
        refuse_input_data(raw / "pred", "--out")
    assert input_data_folder(tmp_path / "data" / "runs") is None


# ----------------------------------------------------------------------------- what the tools read


@pytest.mark.parametrize("kind", ["fifo", "device", "link to a device", "folder"])
def test_open_regular_refuses_anything_but_a_regular_file_without_blocking(tmp_path, no_hang, kind):
    from segmentnet.core.files import open_regular, read_json, read_regular

    path = tmp_path / "x.onnx"
    if kind == "fifo":
        os.mkfifo(path)            # reading it would wait for a writer for ever
    elif kind == "device":
        path = Path("/dev/zero")   # reading it would never end
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    message = "is a folder, not a file" if kind == "folder" else "is a special file .a fifo, a device or a socket."
    with no_hang(10):
        for read in (lambda: open_regular(path, "ONNX file"), lambda: read_regular(path, "ONNX file", 100),
                     lambda: read_json(path, "ONNX file")):
            with pytest.raises(DataError, match=f"ONNX file {re.escape(str(path))} {message}"):
                read()


def test_read_regular_refuses_a_file_over_its_limit(tmp_path):
    from segmentnet.core.files import read_regular

    (tmp_path / "big.json").write_bytes(b" " * 101)
    with pytest.raises(DataError, match="is 101 bytes, more than the 100"):
        read_regular(tmp_path / "big.json", "the file", 100)
    assert read_regular(tmp_path / "big.json", "the file", 101) == b" " * 101


@pytest.mark.parametrize("text,problem", [
    ('{"val_every": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper than 64 levels"),
    ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
    ('{"time_budget": ' + "9" * 401 + "}", "an integer of 401 digits"),
    ("-" + "1" * 41, "an integer of 41 digits"),
])
def test_json_beyond_the_limits_is_a_value_error_not_a_recursion_or_overflow(text, problem):
    from segmentnet.core.jsonfile import loads

    with pytest.raises(ValueError, match=problem):
        loads(text)


def test_json_within_the_limits_reads_as_json_does():
    from segmentnet.core.jsonfile import loads

    deep = "[" * 64 + "]" * 64
    assert loads(deep) == json.loads(deep)
    assert loads('{"a": "[[[[' + "[" * 100 + '", "n": ' + "9" * 40 + ', "x": NaN}')["n"] == int("9" * 40)
    assert loads(b'{"k": [1, 2.5e300, "\\\\"]}') == {"k": [1, 2.5e300, "\\"]}


def test_atomic_path_removes_the_temporary_files_of_killed_processes_only(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()  # (the test runner's parent: alive)
    stale = tmp_path / f".best.tmp-{dead_pid}.onnx"       # left by a run killed while verifying
    running = tmp_path / f".best.tmp-{live_pid}.onnx"     # another process writing it right now
    other = tmp_path / f".other.tmp-{dead_pid}.onnx"      # another target's: not this write's business
    users = tmp_path / ".best.tmp-notes.onnx"             # not of our pattern
    for path in (stale, running, other, users):
        path.write_bytes(b"x")
    with atomic_path(tmp_path / "best.onnx") as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "best.onnx").read_bytes() == b"new"
    assert not stale.exists() and running.exists() and other.exists() and users.exists()


def test_claim_folder_refuses_a_link_to_a_folder_and_writes_nothing_there(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    with pytest.raises(DataError, match=r"is a link \(to .*elsewhere\); Report writes only into a real folder"):
        claim_folder(tmp_path / "out", "Report", "the folder for the Markdown's pictures")
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "Free space on that disk"),
                                          (errno.EACCES, "No permission to write in"),
                                          (errno.EROFS, "is on a read-only file system")])
def test_one_writing_names_the_file_the_cause_and_what_to_do(tmp_path, code, advice):
    from segmentnet.core.checkpoint import CheckpointWriteError
    from segmentnet.core.outputs import OutputWriteError, writing

    target = tmp_path / "scores.json"
    with pytest.raises(OutputWriteError) as caught:
        with writing(target, then="run Evaluate.py again") as path:
            assert path == target
            raise OSError(code, os.strerror(code), str(target))
    text = str(caught.value)
    assert text.startswith(f"could not write {target}: {os.strerror(code)} ({errno.errorcode[code]}); ") and advice in text
    # a folder being written: the file inside it that failed is named, and the advice is about its folder
    with pytest.raises(OutputWriteError) as caught:
        with writing(tmp_path / "data"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "data" / ".part-1" / "x.png"))
    assert str(caught.value).startswith(f"could not write {tmp_path / 'data'}: {os.strerror(errno.EACCES)} (EACCES) "
                                        f"({tmp_path / 'data' / '.part-1' / 'x.png'}); No permission to write in "
                                        f"{tmp_path / 'data' / '.part-1'}")
    assert text.endswith(", then run Evaluate.py again") and isinstance(caught.value, DataError)
    assert issubclass(CheckpointWriteError, OutputWriteError)  # (a checkpoint's failed write is one of these)
