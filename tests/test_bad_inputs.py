"""Bad inputs: each gets a specific message, a non-zero exit, and leaves no output that looks complete.

The scripts are run through their own `main` (in-process with call_main, which is what
`python Script.py` calls), and a representative few as real subprocesses to prove the exit codes.
Malicious archives and checkpoints are built here, by hand, with tarfile, zipfile and pickle.
"""
from __future__ import annotations

import io
import json
import pickle
import stat
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import DataExtract
from segmentnet.datasets import DATASETS
from segmentnet.models import MODELS
import DataSeparate
import TrainSegmentNet
from conftest import ROOT, config_args, make_small_voc, tiny_train_config, unprivileged
from segmentnet import synthetic
from segmentnet.archive import MARKER
from segmentnet.checkpoint import load_checkpoint, load_weights, save_checkpoint
from segmentnet.cli import call_main
from segmentnet.datasets import voc2012
from segmentnet.engine import train
from segmentnet.errors import DataError
from segmentnet.models import build_model

VOC = voc2012.ARCHIVE
SETS = f"{voc2012.ROOT}/ImageSets/Segmentation"
TINY_COUNTS = {"train": 3, "val": 1, "unlabelled": 0}


def run_script(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def main_exit(capsys, main, *args) -> tuple[int, str]:
    """(exit status, stderr) of a script's main called as `python Script.py args` would call it."""
    capsys.readouterr()
    status = call_main(main, [str(a) for a in args])
    return status, capsys.readouterr().err


def leftovers(data: Path) -> list[str]:
    """What an extraction left under data/: any file or link, or the target folder itself."""
    if not data.exists():
        return []
    found = [p for p in data.rglob("*") if p.is_file() or p.is_symlink() or p == data / "raw" / VOC.stem]
    return sorted(str(p.relative_to(data)) for p in found)


# ----------------------------------------------------------------------------- archives


def assert_extract_refused(capsys, tmp_path, archive: Path, message: str, *extra) -> str:
    data = tmp_path / "data"
    status, err = main_exit(capsys, DataExtract.main, "--archive", archive, "--data-dir", data, *extra)
    assert status == 2, err
    assert err.startswith("error: ") and str(archive) in err, err
    assert message in err, err
    assert leftovers(data) == [], "a refused archive must leave nothing under data/"
    return err


def test_missing_archive_says_where_to_put_it(tmp_path):
    result = run_script("DataExtract.py", "--downloads", tmp_path / "dl", "--data-dir", tmp_path / "data",
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert f"{tmp_path / 'dl' / VOC.filename} not found" in result.stderr
    assert VOC.url in result.stderr and "--download" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def voc_tar(tmp_path_factory) -> Path:
    """A small synthetic archive in VOC's official layout (its md5 is not the official one)."""
    folder = tmp_path_factory.mktemp("voc_tar")
    return synthetic.write_tar(folder / VOC.filename, voc2012.synthetic_files(0, TINY_COUNTS))


def test_wrong_checksum(capsys, tmp_path, voc_tar):
    err = assert_extract_refused(capsys, tmp_path, voc_tar, f"the official archive's is {VOC.md5}")
    assert "download it again" in err


def test_corrupt_archive(capsys, tmp_path):
    junk = tmp_path / VOC.filename
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert_extract_refused(capsys, tmp_path, junk, "not a readable tar or zip archive", "--no-verify")


def member_offsets(archive: Path) -> list[int]:
    with tarfile.open(archive) as tar:
        return [m.offset for m in tar]


@pytest.mark.parametrize("where", ["inside a member", "at a member boundary"])
def test_truncated_tar(capsys, tmp_path, voc_tar, where):
    data = voc_tar.read_bytes()
    offsets = member_offsets(voc_tar)
    # A cut exactly where a member's header starts reads like a complete, shorter tar.
    cut = offsets[len(offsets) // 2] + (700 if where == "inside a member" else 0)
    truncated = tmp_path / VOC.filename
    truncated.write_bytes(data[:cut])
    assert_extract_refused(capsys, tmp_path, truncated, "truncated", "--no-verify")


def test_truncated_zip(capsys, tmp_path):
    archive = synthetic.write_zip(tmp_path / "voc.zip", voc2012.synthetic_files(0, TINY_COUNTS))
    archive.write_bytes(archive.read_bytes()[:-300])
    assert_extract_refused(capsys, tmp_path, archive, "truncated or corrupt", "--no-verify")


def test_archive_of_another_dataset(capsys, tmp_path):
    other = synthetic.write_tar(tmp_path / VOC.filename, {"ADEChallengeData2016/images/training/a.jpg": b"x"})
    assert_extract_refused(capsys, tmp_path, other, f"no member under {SETS + '/'!r}", "--no-verify")


# Each case: (name of the member to look for in the message, what the message says, members).
# A member is (name, kind, payload): kind is file, symlink, hardlink, fifo or device.
GENUINE = (f"{SETS}/train.txt", "file", b"2007_000001\n")
ESCAPES = {
    "absolute path": ("/tmp/segmentnet-evil", "has an absolute path",
                      [GENUINE, ("/tmp/segmentnet-evil", "file", b"x")]),
    "dot-dot": ("VOCdevkit/../../evil", "climbs out with '..'",
                [GENUINE, ("VOCdevkit/../../evil", "file", b"x")]),
    "symlink out": ("VOCdevkit/link", "link pointing outside",
                    [GENUINE, ("VOCdevkit/link", "symlink", "../../outside"), ("VOCdevkit/link/evil", "file", b"x")]),
    "absolute symlink": ("VOCdevkit/passwd", "link pointing outside",
                         [GENUINE, ("VOCdevkit/passwd", "symlink", "/etc/passwd")]),
    # Each link stays inside when read on its own; followed one after the other they climb out.
    "symlink chain": ("VOCdevkit/a/up/up2", "lies beneath the symlink 'VOCdevkit/a/up'",
                      [GENUINE, ("VOCdevkit/a/up", "symlink", ".."), ("VOCdevkit/a/up/up2", "symlink", ".."),
                       ("VOCdevkit/a/up/up2/evil", "file", b"x")]),
    "hardlink out": ("VOCdevkit/hard", "hard link to '../../etc/passwd' outside",
                     [GENUINE, ("VOCdevkit/hard", "hardlink", "../../etc/passwd")]),
    "absolute hardlink": ("VOCdevkit/hard", "hard link to '/etc/passwd' outside",
                          [GENUINE, ("VOCdevkit/hard", "hardlink", "/etc/passwd")]),
    "fifo": ("VOCdevkit/pipe", "is a device, fifo or other special file", [GENUINE, ("VOCdevkit/pipe", "fifo", b"")]),
    "device": ("VOCdevkit/sda", "is a device, fifo or other special file", [GENUINE, ("VOCdevkit/sda", "device", b"")]),
    "same name twice": (f"{SETS}/train.txt", "appears twice", [GENUINE, (f"{SETS}/train.txt", "file", b"other\n")]),
}


def write_tar_members(path: Path, members) -> Path:
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
    types = {"file": stat.S_IFREG, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO, "device": stat.S_IFCHR}
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = (types[kind] | 0o644) << 16
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it
                zf.writestr(info, payload.encode() if isinstance(payload, str) else payload)
    return path


@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_members_are_refused(capsys, tmp_path, fmt, case):
    member, message, members = ESCAPES[case]
    if fmt == "zip" and any(kind == "hardlink" for _, kind, _ in members):
        pytest.skip("zip has no hard links: a zip cannot hold this member")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    writer = write_tar_members if fmt == "tar" else write_zip_members
    archive = writer(downloads / (VOC.filename if fmt == "tar" else "VOCtrainval.zip"), members)
    err = assert_extract_refused(capsys, tmp_path, archive, message, "--no-verify")
    assert f"member {member!r}" in err, err
    # Nothing was written anywhere: refused before a single member is.
    assert sorted(p.name for p in tmp_path.rglob("*")) == [archive.name, "downloads"]
    assert not Path("/tmp/segmentnet-evil").exists()


def test_symlinks_inside_the_target_are_kept(capsys, tmp_path):
    """The checks refuse escapes only: a link between two members of the archive is extracted."""
    members = [GENUINE, ("VOCdevkit/alias.txt", "symlink", "VOC2012/ImageSets/Segmentation/train.txt")]
    for writer, name in ((write_tar_members, VOC.filename), (write_zip_members, "voc.zip")):
        data = tmp_path / f"data-{name}"
        status, err = main_exit(capsys, DataExtract.main, "--archive", writer(tmp_path / name, members),
                                "--data-dir", data, "--no-verify")
        assert status == 0, err
        assert (data / "raw" / VOC.stem / "VOCdevkit" / "alias.txt").read_bytes() == GENUINE[2]


def test_zip_written_without_file_types_extracts(capsys, tmp_path):
    """Python's zipfile (and Windows tools) record no file type in a member's mode: still a plain file."""
    archive = tmp_path / "voc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, payload in voc2012.synthetic_files(0, TINY_COUNTS).items():
            zf.writestr(zipfile.ZipInfo(name), payload)  # a bare ZipInfo: no file-type bits at all
    with zipfile.ZipFile(archive) as zf:
        assert all(stat.S_IFMT(info.external_attr >> 16) == 0 for info in zf.infolist())
    status, err = main_exit(capsys, DataExtract.main, "--archive", archive, "--data-dir", tmp_path / "data",
                            "--no-verify")
    assert status == 0, err
    assert (tmp_path / "data" / "raw" / VOC.stem / SETS / "train.txt").exists()


def test_member_larger_than_the_dataset_allows(capsys, tmp_path):
    big = bytes(VOC.max_member_bytes + 1)  # zeros: a few kB once compressed, as in a zip bomb
    tar_path = tmp_path / "dl" / (VOC.filename + ".gz")
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
        for name, payload in ((GENUINE[0], GENUINE[2]), ("VOCdevkit/VOC2012/JPEGImages/bomb.jpg", big)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    zip_path = tmp_path / "dl" / "VOCtrainval.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(GENUINE[0], GENUINE[2])
        zf.writestr("VOCdevkit/VOC2012/JPEGImages/bomb.jpg", big)
    for archive in (tar_path, zip_path):
        assert archive.stat().st_size < 200_000
        assert_extract_refused(capsys, tmp_path, archive, f"more than any file of this dataset "
                                                          f"({VOC.max_member_bytes} bytes)", "--no-verify")


def test_zip_whose_header_lies_about_a_member_size(capsys, tmp_path):
    """The sizes in the headers say 1 kB; the data inflates to 17 MB. Extraction writes at most the
    stated size, then finds the data does not match and refuses the archive."""
    path = tmp_path / "VOCtrainval.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(GENUINE[0], GENUINE[2])
        zf.writestr("VOCdevkit/VOC2012/JPEGImages/liar.jpg", bytes(VOC.max_member_bytes + 1))
    data = bytearray(path.read_bytes())
    name = b"VOCdevkit/VOC2012/JPEGImages/liar.jpg"
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(name.decode()).header_offset
    central = data.index(name, local + 30 + len(name)) - 46  # the name's second copy, in the central directory
    assert data[central: central + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, local + 22, 1000)    # the local header's uncompressed size
    struct.pack_into("<I", data, central + 24, 1000)  # the central directory's uncompressed size
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("VOCdevkit/VOC2012/JPEGImages/liar.jpg").file_size == 1000
    assert_extract_refused(capsys, tmp_path, path, "extraction failed (Bad CRC-32", "--no-verify")


def zip_with_patched_header(path: Path, member: str, field: str, value: int) -> Path:
    """A zip of GENUINE and `member`, with member's flags or compression method, in both its local
    header and its central directory entry, set to value by hand."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(GENUINE[0], GENUINE[2])
        zf.writestr(member, b"x" * 100)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(member).header_offset
    central = data.index(member.encode(), local + 30 + len(member)) - 46
    assert data[local: local + 4] == b"PK\x03\x04" and data[central: central + 4] == b"PK\x01\x02"
    at_local, at_central = {"flags": (6, 8), "method": (8, 10)}[field]
    struct.pack_into("<H", data, local + at_local, value)
    struct.pack_into("<H", data, central + at_central, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("field,value,message", [
    ("flags", 0x1, "is encrypted; the official archives are not, and SegmentNet takes no passwords"),
    ("method", 9, "is compressed with method 9 (Deflate64), which Python's zipfile cannot read"),
    ("method", 98, "is compressed with method 98 (ppmd), which Python's zipfile cannot read"),
], ids=["encrypted", "deflate64", "ppmd"])
def test_zip_member_that_zipfile_cannot_read(capsys, tmp_path, field, value, message):
    member = "VOCdevkit/VOC2012/JPEGImages/x.jpg"
    archive = zip_with_patched_header(tmp_path / "VOCtrainval.zip", member, field, value)
    err = assert_extract_refused(capsys, tmp_path, archive, message, "--no-verify")
    assert f"member {member!r}" in err and "Traceback" not in err


def tar_with_pax_path(path: Path, name: str) -> Path:
    """A tar whose second member's name, given in a pax header, is `name` (which may hold a NUL byte)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, payload in ((GENUINE[0], GENUINE[2]), ("VOCdevkit/placeholder", b"x")):
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            if member != GENUINE[0]:
                info.pax_headers = {"path": name}
            tar.addfile(info, io.BytesIO(payload))
    return path


def zip_with_undecodable_name(path: Path) -> Path:
    """A zip whose member name is flagged UTF-8 but is not: 'é' (2 bytes) patched to 2 invalid bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(GENUINE[0], GENUINE[2])
        zf.writestr("VOCdevkit/\u00e9.txt", b"x")  # not ASCII: zipfile sets the UTF-8 flag
    data = path.read_bytes()
    assert data.count("\u00e9".encode()) == 2  # the local header's and the central directory's name
    path.write_bytes(data.replace("\u00e9".encode(), b"\xff\xfe"))
    return path


# Each case: a function of the folder that writes the archive there, and what the message says.
ODD_NAMES = {
    "tar name not UTF-8": (lambda d: write_tar_members(d / "a.tar", [GENUINE, ("VOCdevkit/\udcff.txt", "file", b"x")]),
                           "the name of member 'VOCdevkit/\\udcff.txt' is not valid UTF-8 text (b'VOCdevkit/\\xff.txt')"),
    "tar name with NUL": (lambda d: tar_with_pax_path(d / "a.tar", "VOCdevkit/a\x00b"),
                          "the name of member 'VOCdevkit/a\\x00b' contains a NUL byte"),
    "tar member without a name": (lambda d: write_tar_members(d / "a.tar", [GENUINE, ("", "file", b"x")]),
                                  "member '' is a file without a name"),
    "tar symlink target not UTF-8": (lambda d: write_tar_members(d / "a.tar", [GENUINE, ("VOCdevkit/l", "symlink",
                                                                                        "VOC2012\udcff")]),
                                     "member 'VOCdevkit/l': its link target is not valid UTF-8 text"),
    "zip name not UTF-8": (lambda d: zip_with_undecodable_name(d / "a.zip"),
                           "member name b'VOCdevkit/\\xff\\xfe.txt' is not valid UTF-8 text, though the archive says"),
    "zip symlink target not UTF-8": (lambda d: write_zip_members(d / "a.zip", [GENUINE, ("VOCdevkit/l", "symlink",
                                                                                        b"VOC2012\xff")]),
                                     "member 'VOCdevkit/l': its link target is not valid UTF-8 text (b'VOC2012\\xff')"),
    "zip symlink target with NUL": (lambda d: write_zip_members(d / "a.zip", [GENUINE, ("VOCdevkit/l", "symlink",
                                                                                       b"VOC2012\x00x")]),
                                    "member 'VOCdevkit/l': its link target contains a NUL byte"),
}


@pytest.mark.parametrize("case", sorted(ODD_NAMES))
def test_member_names_and_link_targets_that_cannot_be_paths(capsys, tmp_path, case):
    write, message = ODD_NAMES[case]
    (tmp_path / "dl").mkdir()
    archive = write(tmp_path / "dl")
    assert_extract_refused(capsys, tmp_path, archive, message, "--no-verify")
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["dl", archive.name])  # refused before writing


def flip_bytes(path: Path, start: int, count: int = 64) -> Path:
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))
    return path


def compressed_archive(path: Path, kind: str) -> Path:
    """GENUINE and a 200 kB member, compressed as kind: in a tar random (gzip stores it uncompressed), in
    a zip mostly zeros (so that the bytes flipped are compressed data, not stored)."""
    name, payload = "VOCdevkit/VOC2012/JPEGImages/x.jpg", np.random.default_rng(0).bytes(200_000)
    if kind.startswith("zip"):
        payload = payload[:100] + bytes(200_000)
    if kind.startswith("zip"):
        method = {"zip deflate": zipfile.ZIP_DEFLATED, "zip lzma": zipfile.ZIP_LZMA}[kind]
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            zf.writestr(GENUINE[0], GENUINE[2])
            zf.writestr(name, payload)
        with zipfile.ZipFile(path) as zf:
            return flip_bytes(path, zf.getinfo(name).header_offset + 30 + len(name) + 5)  # into its data
    with tarfile.open(path, {"tar.gz": "w:gz", "tar.xz": "w:xz"}[kind]) as tar:
        for member, data in ((GENUINE[0], GENUINE[2]), (name, payload)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return flip_bytes(path, 50_000)


@pytest.mark.parametrize("kind,message", [
    ("zip deflate", "extraction failed (Error -3 while decompressing data"),
    ("zip lzma", "extraction failed (Corrupt input data)"),
    ("tar.xz", "truncated or corrupt (Corrupt input data)"),
    ("tar.gz", "truncated or corrupt (CRC check failed"),  # gzip's stored blocks decode: only the CRC tells
])
def test_corrupt_compressed_data(capsys, tmp_path, kind, message):
    archive = compressed_archive(tmp_path / f"VOCtrainval.{kind.split()[0]}", kind)
    assert_extract_refused(capsys, tmp_path, archive, message, "--no-verify")


@pytest.mark.parametrize("case", ["a folder", "a name too long"])
def test_archive_path_that_is_no_readable_file(capsys, tmp_path, case):
    if case == "a folder":
        path, message = tmp_path / VOC.filename, "is a folder, not an archive file; pass the archive file itself"
        path.mkdir()
    else:
        path, message = tmp_path / ("x" * 300 + ".tar"), "cannot be looked at (File name too long)"
    assert_extract_refused(capsys, tmp_path, path, message)  # with the md5 check, which read it first


@pytest.mark.parametrize("what", ["archive", "downloads folder"])
def test_unreadable_archive_or_downloads_folder(tmp_path, voc_tar, what):
    import shutil

    downloads, archive = tmp_path / "dl", tmp_path / "dl" / VOC.filename
    downloads.mkdir()
    shutil.copy(voc_tar, archive)
    prefix = unprivileged()  # root reads any file: run without the capabilities that let it
    (archive if what == "archive" else downloads).chmod(0)
    try:
        result = subprocess.run([*prefix, sys.executable, str(ROOT / "DataExtract.py"), "--downloads", str(downloads),
                                 "--data-dir", str(tmp_path / "data")], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
    finally:
        downloads.chmod(0o755)
        archive.chmod(0o644)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    expected = {"archive": f"{archive}: the archive cannot be read (Permission denied)",
                "downloads folder": f"{archive} cannot be looked at (Permission denied)"}[what]
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()


def test_data_dir_that_cannot_be_written(capsys, tmp_path, voc_tar):
    (tmp_path / "data").write_text("a file, not a folder")
    status, err = main_exit(capsys, DataExtract.main, "--archive", voc_tar, "--data-dir", tmp_path / "data",
                            "--no-verify")
    assert status == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot write into {tmp_path / 'data' / 'raw'} (Not a directory); choose another "
                          f"--data-dir"), err


def test_disk_full_during_extraction_is_not_blamed_on_the_archive(capsys, tmp_path, monkeypatch):
    import errno

    from segmentnet import archive as archive_module

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_module, "_copy_bounded", disk_full)
    archive = synthetic.write_zip(tmp_path / "voc.zip", voc2012.synthetic_files(0, TINY_COUNTS))
    err = assert_extract_refused(capsys, tmp_path, archive, f"cannot write the extraction of {archive} into "
                                                            f"{tmp_path / 'data' / 'raw'}: No space left on device; "
                                                            f"free space, or choose another --data-dir", "--no-verify")
    assert "corrupt" not in err


CORRUPT_MARKERS = {
    "not JSON": (b"{not json", "it cannot be read as JSON (Expecting property name"),
    "not UTF-8": (b"\xff\xfe{}", "it cannot be read as JSON ('utf-8' codec can't decode"),
    "a list": (b"[1, 2]", "it holds a JSON list, not an object"),
    "wrong types": (json.dumps({"archive": 5, "md5": "0" * 32, "synthetic": "no", "members": 3}).encode(),
                    "wrong or missing archive 5, synthetic 'no'"),
    "not an md5": (json.dumps({"archive": VOC.filename, "md5": "../x", "synthetic": False, "members": 3}).encode(),
                   "wrong or missing md5 '../x'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_MARKERS) + ["older DataExtract"])
def test_corrupt_extraction_marker(capsys, tmp_path, voc_tar, case):
    data = tmp_path / "data"
    target, args = data / "raw" / VOC.stem, ("--archive", voc_tar, "--data-dir", data, "--no-verify")
    status, err = main_exit(capsys, DataExtract.main, *args)
    assert status == 0, err
    if case == "older DataExtract":  # recorded neither whether it was synthetic, nor (unverified) the md5
        content = json.dumps({"archive": VOC.filename, "md5": None, "members": 3}).encode()
        message = (f"{target / MARKER} was written by an older DataExtract, which did not record whether {target} "
                   f"holds synthetic data")
    else:
        content, problem = CORRUPT_MARKERS[case]
        message = f"{target / MARKER} is not a marker DataExtract wrote: {problem}"
    (target / MARKER).write_bytes(content)
    before = sorted(target.rglob("*"))
    status, err = main_exit(capsys, DataExtract.main, *args)
    assert status == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {message}") and f"remove {target} " in err, err
    assert sorted(target.rglob("*")) == before


# ----------------------------------------------------------------------------- images and masks


def broken(kind: str, files: dict[str, bytes], stem: str) -> dict[str, bytes]:
    """A copy of the synthetic VOC files with one pair spoiled in the given way."""
    jpg, png = f"{voc2012.ROOT}/JPEGImages/{stem}.jpg", f"{voc2012.ROOT}/SegmentationClass/{stem}.png"
    files = dict(files)
    label = np.array(Image.open(io.BytesIO(files[png])))
    if kind == "corrupt JPEG":
        files[jpg] = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    elif kind == "truncated JPEG":
        files[jpg] = files[jpg][: len(files[jpg]) // 2]
    elif kind == "truncated PNG":
        files[png] = files[png][: len(files[png]) // 2]
    elif kind == "corrupt PNG":
        spoiled = bytearray(files[png])
        spoiled[spoiled.index(b"IDAT") + 10] ^= 0xFF  # the chunk's checksum no longer matches
        files[png] = bytes(spoiled)
    elif kind == "sizes differ":
        files[png] = synthetic.palette_png(label[:-7, :-5].copy(), list(voc2012.PALETTE))
    elif kind == "colour mask":
        rgb = np.array(voc2012.PALETTE + ((224, 224, 192),) * 235, dtype=np.uint8)[label]
        files[png] = synthetic.encode(Image.fromarray(rgb, "RGB"), "PNG")
    elif kind == "label out of range":
        label[:4, :4] = 30
        files[png] = synthetic.palette_png(label, list(voc2012.PALETTE))
    elif kind == "empty split":
        files[f"{SETS}/train.txt"] = b""
    return files


def first_stem(files: dict[str, bytes]) -> str:
    return sorted(f for f in files if f.startswith(f"{voc2012.ROOT}/JPEGImages/"))[0].rsplit("/", 1)[1][:-4]


def write_raw(data: Path, files: dict[str, bytes]) -> Path:
    """The VOC files written under data/raw/ as DataExtract leaves them; returns that raw folder."""
    raw = data / "raw" / VOC.stem
    for name, payload in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(payload)
    return raw


PAIR_PROBLEMS = {
    "corrupt JPEG": ("{jpg}", "the image cannot be decoded"),
    "truncated JPEG": ("{jpg}", "truncated"),
    "truncated PNG": ("{png}", "the mask cannot be decoded"),
    "corrupt PNG": ("{png}", "the mask cannot be decoded"),
    "sizes differ": ("{png}", "they must be the same size"),
    "colour mask": ("{png}", "colour (RGB) mask, but class indices are expected"),
    "label out of range": ("{png}", "label values [30] are outside the 21 classes"),
    "empty split": ("", "split(s) train have no images"),
}


@pytest.mark.parametrize("kind", sorted(PAIR_PROBLEMS))
def test_bad_pairs_stop_separation(capsys, tmp_path, kind):
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    raw = write_raw(tmp_path / "data", broken(kind, files, stem))
    where, message = PAIR_PROBLEMS[kind]
    where = where.format(jpg=raw / voc2012.ROOT / "JPEGImages" / f"{stem}.jpg",
                         png=raw / voc2012.ROOT / "SegmentationClass" / f"{stem}.png")
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1)
    assert status == 2, err
    assert f"error: {where}" in err and message in err, err
    # Nothing but the raw files: no data/voc2012, no half-written temporary folder.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_skip_bad_skips_and_lists_the_pair(capsys, tmp_path):
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    write_raw(tmp_path / "data", broken("colour mask", files, stem))
    status, _ = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad")
    assert status == 0
    info = json.loads((tmp_path / "data" / "voc2012" / "dataset.json").read_text())
    assert [s["stem"] for s in info["skipped"]] == [stem]
    assert sum(info["counts"].values()) == TINY_COUNTS["train"] + TINY_COUNTS["val"] - 1


def test_corrupt_image_through_the_script(tmp_path):
    files = broken("truncated JPEG", voc2012.synthetic_files(0, TINY_COUNTS), "2008_000001")
    synthetic.write_tar(tmp_path / "downloads" / VOC.filename, files)
    extracted = run_script("DataExtract.py", "--no-verify", cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    result = run_script("DataSeparate.py", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "\nerror: " in result.stderr and "2008_000001.jpg: the image cannot be decoded" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- names and lists from the data


def victims(folder: Path, size: tuple[int, int] = (20, 16)) -> dict[Path, tuple[bytes, int]]:
    """Decoy files outside the data folder, a valid image and mask (so that a tool that reached
    them would use them); their bytes and times, to compare after."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "victim.jpg").write_bytes(synthetic.encode(Image.new("RGB", size, (200, 10, 10)), "JPEG"))
    (folder / "victim.png").write_bytes(synthetic.palette_png(np.ones(size[::-1], np.uint8), list(voc2012.PALETTE)))
    return file_states(folder)


def file_states(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def escaping_ids(victim: Path) -> dict[str, str]:
    """Split-list ids that name `victim` (no suffix), each in its own way."""
    climb = "../" * 40 + str(victim).lstrip("/")  # '..' past the root stays at the root
    return {"dot-dot": climb, "through a link": "../up/" + climb, "absolute": str(victim)}


@pytest.mark.parametrize("case", ["dot-dot", "through a link", "absolute"])
def test_split_list_ids_that_lead_out_are_refused(capsys, tmp_path, case):
    """A link that stays inside the archive is extracted; an id that leads out through it (or
    with '..', or an absolute one) is refused, naming the list, the line and the id; nothing
    outside data/ is read or written."""
    before = victims(tmp_path)
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    bad_id = escaping_ids(tmp_path / "victim")[case]
    genuine = files[f"{SETS}/train.txt"].decode().split()
    files[f"{SETS}/train.txt"] = ("\n".join([genuine[0], bad_id] + genuine[1:]) + "\n").encode()
    members = [(name, "file", payload) for name, payload in files.items()]
    members.append((f"{voc2012.ROOT}/up", "symlink", "JPEGImages"))
    archive = write_tar_members(tmp_path / VOC.filename, members)
    data = tmp_path / "data"
    status, err = main_exit(capsys, DataExtract.main, "--archive", archive, "--data-dir", data, "--no-verify")
    assert status == 0, err
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", data, "--workers", 1)
    assert status == 2, err
    listed = data / "raw" / VOC.stem / SETS / "train.txt"
    assert err.startswith(f"error: {listed} line 2: the name {bad_id!r} ") and "Traceback" not in err, err
    assert file_states(tmp_path) == before | {archive: file_states(tmp_path)[archive]}
    assert sorted(p.name for p in data.iterdir()) == ["raw"]


def test_raw_files_that_link_out_are_refused(capsys, tmp_path):
    """A raw folder made by hand (or a link added after extraction): a listed image that is a link
    to a file outside data/raw/<archive> is never read."""
    before = victims(tmp_path)
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    raw = write_raw(tmp_path / "data", files)
    image = raw / voc2012.ROOT / "JPEGImages" / f"{stem}.jpg"
    image.unlink()
    image.symlink_to(tmp_path / "victim.jpg")
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad")
    assert status == 2, err
    line = files[f"{SETS}/train.txt"].decode().split().index(stem) + 1
    assert err.startswith(f"error: {raw / SETS / 'train.txt'} line {line}: {image} leads to {tmp_path / 'victim.jpg'}, "
                          f"outside {raw.resolve()}"), err
    assert file_states(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
    # the split list itself, a link to a list outside
    image.unlink()
    image.write_bytes(files[f"{voc2012.ROOT}/JPEGImages/{stem}.jpg"])
    listed = raw / SETS / "train.txt"
    listed.unlink()
    listed.symlink_to(tmp_path / "victim.txt")
    (tmp_path / "victim.txt").write_text(f"{stem}\n")
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1)
    assert status == 2 and err.startswith(f"error: split list {listed}: {listed} leads to {tmp_path / 'victim.txt'}, "
                                          f"outside {raw.resolve()}"), err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


SPLIT_LIST_PROBLEMS = {
    "a folder": (lambda path: path.mkdir(), "is not a file (a folder, or a special file)"),
    "not text": (lambda path: path.write_bytes(b"2008_000001\n\xff\xfe\x00\x81\n"), "line 2: b'\\xff\\xfe"),
    "a NUL byte": (lambda path: path.write_bytes(b"2008\x00_000001\n"), "line 1: the name '2008\\x00_000001' contains a NUL"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_LIST_PROBLEMS))
def test_bad_split_lists_are_named(capsys, tmp_path, case):
    raw = write_raw(tmp_path / "data", voc2012.synthetic_files(0, TINY_COUNTS))
    listed = raw / SETS / "train.txt"
    listed.unlink()
    spoil, message = SPLIT_LIST_PROBLEMS[case]
    spoil(listed)
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1)
    assert status == 2 and err.startswith(f"error: {listed}") and message in err, err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height greyscale pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("slot,size", [("image", (30000, 30000)), ("mask", (10000, 10000))])
def test_decompression_bomb_is_named_and_skippable(capsys, tmp_path, slot, size):
    """30000x30000 is past Pillow's error limit, 10000x10000 past its warning limit: both refused
    from the header, before any pixel is allocated."""
    files = voc2012.synthetic_files(0, TINY_COUNTS)
    stem = first_stem(files)
    bomb = f"{voc2012.ROOT}/JPEGImages/{stem}.jpg" if slot == "image" else f"{voc2012.ROOT}/SegmentationClass/{stem}.png"
    files[bomb] = png_declaring(*size)
    raw = write_raw(tmp_path / "data", files)
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1)
    assert status == 2, err
    assert f"\nerror: {raw / bomb}: the {slot} declares more pixels than any image of a dataset" in err, err
    assert "decompression bomb" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path / "data", "--workers", 1, "--skip-bad")
    assert status == 0, err
    info = json.loads((tmp_path / "data" / "voc2012" / "dataset.json").read_text())
    assert [s["stem"] for s in info["skipped"]] == [stem] and "decompression bomb" in info["skipped"][0]["error"]


@pytest.mark.parametrize("content", [b"{\"counts\": {\"train\"", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_dataset_json_of_a_finished_separation(capsys, tmp_path, content):
    make_small_voc(tmp_path, counts=TINY_COUNTS)
    summary = tmp_path / "voc2012" / "dataset.json"
    summary.write_bytes(content)
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path, "--workers", 1)
    assert status == 2 and err.startswith(f"error: {summary} ") and "pass --force to separate again" in err, err
    status, err = main_exit(capsys, DataSeparate.main, "--data-dir", tmp_path, "--workers", 1, "--force")
    assert status == 0, err
    assert json.loads(summary.read_text())["counts"] == {"train": 3, "val": 1}


# ----------------------------------------------------------------------------- names and hyperparameters


def test_unknown_dataset_lists_the_choices(capsys, tmp_path):
    for main in (DataExtract.main, DataSeparate.main):
        status, err = main_exit(capsys, main, "--dataset", "vocc", "--data-dir", tmp_path / "data")
        assert status == 2 and err.strip() == f"error: unknown dataset 'vocc'; choices: {', '.join(sorted(DATASETS))}", err
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> Path:
    return make_small_voc(tmp_path_factory.mktemp("tiny_voc"), counts={"train": 4, "val": 1, "unlabelled": 0})


def train_args(data: Path, out: Path, **overrides) -> list[str]:
    return config_args(tiny_train_config(data, out, **{"batch_size": 2, **overrides}))


@pytest.mark.parametrize("overrides,message", [
    ({"dataset": "kitty"}, f"dataset 'kitty' is unknown; choices: {', '.join(sorted(DATASETS))}"),
    ({"model": "unet2"}, f"model 'unet2' is unknown; choices: {', '.join(sorted(MODELS))}"),
    ({"loss": "dice"}, "loss 'dice' is unknown; choices: ce, ce+jaccard, jaccard"),
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
])
def test_impossible_settings_rejected_before_any_work(capsys, tmp_path, tiny_voc, overrides, message):
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(tiny_voc, tmp_path / "run", **overrides))
    assert status == 2 and err.startswith("error: ") and message in err, err
    if "crop_size 400" in message:
        assert "lower crop_size, raise scale_min or set pad true" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_infinity_in_a_config_file(capsys, tmp_path, tiny_voc):
    import dataclasses

    values = dataclasses.asdict(tiny_train_config(tiny_voc, tmp_path / "run", batch_size=2, scale_max=float("inf"),
                                                  warmup_epochs=float("nan")))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))  # Python's json writes (and reads) Infinity and NaN
    assert "Infinity" in path.read_text()
    status, err = main_exit(capsys, TrainSegmentNet.main, "--config", path)
    assert status == 2 and "scale_max must be a finite number, got inf" in err, err
    assert "warmup_epochs must be a finite number, got nan" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_checks_the_type_and_range_of_its_options(name):
    import inspect

    from segmentnet.errors import ConfigError
    from segmentnet.models import model_option_problems

    options = [p for p in inspect.signature(MODELS[name]).parameters if p not in ("self", "num_classes")]
    numeric = [o for o in ("width", "output_stride", "fc_width", "hidden") if o in options]
    assert numeric or set(options) <= {"encoder", "encoder_weights", "weights", "aux"}, options  # (names, a switch)
    for option in options:  # no option takes a JSON object
        problems = model_option_problems(name, {option: {"x": 1}})
        assert len(problems) == 1 and problems[0].startswith(f"model_options {option} of model {name!r} must be ")
        assert problems[0].endswith("got {'x': 1}"), problems
    for option in numeric[:1]:
        for value in ("32", -1, 2.5, 10 ** 6):
            problems = model_option_problems(name, {option: value})
            assert len(problems) == 1 and problems[0].startswith(f"model_options {option} of model {name!r} must be "), value
            with pytest.raises(ConfigError, match=f"model_options {option}"):
                build_model(name, 21, **{option: value})


def test_model_options_named_by_anything_but_text_are_a_problem_not_a_crash():
    from segmentnet.models import model_option_problems

    # (a checkpoint's dict may hold any keys; build_model(**options) would raise a TypeError)
    assert model_option_problems("segmentnet", {1: 8, "width": 8}) == [
        "model_options of model 'segmentnet' must be named by text, got the key(s) 1"]
    assert model_option_problems("segmentnet", [("width", 8)])[0].startswith(
        "model_options of model 'segmentnet' must be a JSON object (dict) of options")


def test_missing_prepared_dataset(capsys, tmp_path):
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(tmp_path / "nothing", tmp_path / "run"))
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
    ("std of zero", "std must be 3 positive numbers, got [0, 0.2, 0.2]"),
    ("pixel counts as text", "pixel_counts must be a JSON object of 21 pixel counts per split"),
])
def test_damaged_dataset_json(capsys, tmp_path, tiny_voc, kind, message):
    data = copied_dataset(tiny_voc, tmp_path)
    path = data / "voc2012" / "dataset.json"
    damaged = damaged_dataset_json(kind, json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(data, tmp_path / "run"))
    assert status == 2 and err.startswith(f"error: {path} is damaged: ") and message in err, err
    assert "Run DataSeparate.py again with --force" in err
    assert not (tmp_path / "run").exists()


def test_prepared_split_without_masks(capsys, tmp_path, tiny_voc):
    import shutil

    data = copied_dataset(tiny_voc, tmp_path)
    shutil.rmtree(data / "voc2012" / "val" / "masks")
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(data, tmp_path / "run"))
    assert status == 2, err
    assert f"error: {data / 'voc2012' / 'val' / 'masks'} not found: the prepared split 'val' has images but no " \
           f"masks, and training needs them" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_labels_beyond_the_classes_in_a_prepared_dataset(capsys, tmp_path, tiny_voc, workers):
    data = copied_dataset(tiny_voc, tmp_path)
    mask_path = sorted((data / "voc2012" / "train" / "masks").iterdir())[1]  # (not one of the sample grid's)
    with Image.open(mask_path) as mask:
        labels, palette = np.array(mask), mask.getpalette()
    labels[:5, :5] = 21  # one past the last class
    labels[-3:, -3:] = 40
    spoiled = Image.fromarray(labels, mode="P")
    spoiled.putpalette(palette)
    spoiled.save(mask_path)
    status, err = main_exit(capsys, TrainSegmentNet.main,
                            *train_args(data, tmp_path / "run", workers=workers, crop_size=400))
    assert status == 2, err
    assert f"mask {mask_path.name} holds label values [21, 40], outside the 21 classes of dataset.json (0..20, or " \
           f"255 for 'ignore')" in err
    assert err.rstrip().endswith("(in a data loader worker)") == (workers > 0)
    assert "Traceback" not in err


def test_out_is_an_existing_file(capsys, tmp_path, tiny_voc):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(tiny_voc, out))
    assert status == 2 and f"error: run folder {out} is an existing file, not a folder; choose another --out" in err
    assert out.read_text() == "mine"


def test_out_holding_files_of_another_kind(capsys, tmp_path, tiny_voc):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(tiny_voc, out))
    assert status == 2, err
    assert f"error: run folder {out} cannot be used: it holds files that TrainSegmentNet did not write " \
           f"(holiday.jpg)" in err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tiny_voc, tmp_path_factory) -> Path:
    """last.pt of a one-epoch run on the tiny dataset."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_train_config(tiny_voc, run, batch_size=2))
    return run / "last.pt"


def edited_checkpoint(source: Path, dest: Path, **changes) -> Path:
    state = load_checkpoint(source)
    state.update(changes)
    save_checkpoint(state, dest)
    return dest


def test_resume_refuses_another_model_or_class_count(capsys, tmp_path, tiny_voc, trained):
    state = load_checkpoint(trained)
    five = {k: (v[:5] if k.startswith("head.") else v) for k, v in state["model"].items()}
    other = edited_checkpoint(trained, tmp_path / "other.pt", model_name="unet", num_classes=5, model=five)
    status, err = main_exit(capsys, TrainSegmentNet.main,
                            *train_args(tiny_voc, tmp_path / "run", resume=other, epochs=2))
    assert status == 2, err
    assert "it is a 'unet' model, this run trains 'segmentnet'" in err
    assert "it has 5 classes, the dataset 'voc2012' has 21" in err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_dataset_or_a_mid_epoch_batch_size_change(capsys, tmp_path, tiny_voc, trained):
    other = edited_checkpoint(trained, tmp_path / "other.pt", dataset="cityscapes", step_in_epoch=1)
    status, err = main_exit(capsys, TrainSegmentNet.main,
                            *train_args(tiny_voc, tmp_path / "run", resume=other, epochs=2, batch_size=4))
    assert status == 2, err
    assert "it was trained on 'cityscapes', this run uses 'voc2012'" in err
    assert "it stopped inside an epoch with batch_size 2, this run's is 4" in err


def test_resume_refuses_other_model_options(capsys, tmp_path, tiny_voc, trained):
    args = train_args(tiny_voc, tmp_path / "run", resume=trained, epochs=2,
                      model_options={"width": 4, "depth": 2, "blocks": 1})
    status, err = main_exit(capsys, TrainSegmentNet.main, *args)
    assert status == 2 and "its model_options are {'width': 8, 'depth': 2, 'blocks': 1}" in err, err


def test_loading_weights_into_another_model_spells_out_the_mismatch(trained):
    weights = load_checkpoint(trained)["model"]
    with pytest.raises(DataError) as info:
        load_weights(build_model("segmentnet", 5, width=8, depth=2, blocks=1), weights, trained)
    assert "head.weight is (21, 8, 1, 1) in the checkpoint but (5, 8, 1, 1) in the model" in str(info.value)
    assert "head.bias is (21,) in the checkpoint but (5,) in the model" in str(info.value)
    with pytest.raises(DataError) as info:
        load_weights(build_model("segmentnet", 21, width=8, depth=3, blocks=1), weights, trained)
    assert "missing from the checkpoint: encoder.2." in str(info.value)
    assert "differ in shape" in str(info.value)  # the decoder of a deeper net takes other widths
    model = build_model("segmentnet", 21, width=8, depth=2, blocks=1)
    load_weights(model, {"module." + k: v for k, v in weights.items()}, trained)  # DDP's prefix is fine
    assert torch.equal(model.head.weight, weights["head.weight"])


class MakesAFile:
    """Unpickling this calls open(path, 'w'): the file appears if and only if the pickle's code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_checkpoint_is_refused_and_its_code_never_runs(capsys, tmp_path, tiny_voc):
    def payload(path: Path) -> Path:
        checkpoint = tmp_path / f"{path.stem}.pt"
        torch.save({"model": MakesAFile(path), "model_name": "segmentnet"}, checkpoint)
        return checkpoint

    # The payload is live: plain unpickling of the checkpoint's data.pkl runs it and the file appears.
    control = tmp_path / "control-was-run"
    with zipfile.ZipFile(payload(control)) as zf:
        pickle.loads(zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl"))))
    assert control.exists()

    target = tmp_path / "payload-was-run"
    evil = payload(target)
    with pytest.raises(DataError, match="was refused: it holds objects other than tensors"):
        load_checkpoint(evil)
    result = run_script("TrainSegmentNet.py", *train_args(tiny_voc, tmp_path / "run", resume=evil), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: checkpoint {evil} was refused")
    assert not target.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint(capsys, tmp_path, tiny_voc, trained):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(DataError, match="is truncated or corrupt"):
        load_checkpoint(cut)
    status, err = main_exit(capsys, TrainSegmentNet.main, *train_args(tiny_voc, tmp_path / "run", resume=cut))
    assert status == 2 and f"checkpoint {cut} is truncated or corrupt" in err and "last.pt or best.pt" in err, err


@pytest.mark.parametrize("changes,message", [
    (dict(model="weights"), "model must be a mapping of names to tensors, got 'weights'"),
    (dict(model_options="width=8"), "model_options must be a JSON object (dict) of model options, got 'width=8'"),
    (dict(num_classes=21.0), "num_classes must be a whole number >= 1, got 21.0"),
    (dict(rng={"torch": torch.zeros(10, dtype=torch.uint8), "cuda": []}), "rng must be random-generator states"),
    (dict(rng={"torch": torch.get_rng_state(), "cuda": "none"}), "rng must be random-generator states"),
    (dict(epoch=-1, step_in_epoch="2"), "epoch must be a whole number >= 0, got -1; step_in_epoch must be a whole "
                                        "number >= 0, got '2'"),
    (dict(scaler={"scale": "big"}), "scaler must be none or a gradient scaler's state, got {'scale': 'big'}"),
    (dict(optimizer=None), "optimizer is missing"),
    (dict(scheduler=None, epoch_losses=None), "scheduler is missing; epoch_losses is missing"),
])
def test_resume_from_a_checkpoint_of_the_wrong_structure(capsys, tmp_path, tiny_voc, trained, changes, message):
    state = load_checkpoint(trained)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    bad = tmp_path / "bad.pt"
    save_checkpoint(state, bad)
    status, err = main_exit(capsys, TrainSegmentNet.main,
                            *train_args(tiny_voc, tmp_path / "run", resume=bad, epochs=2))
    assert status == 2, err
    assert err.startswith(f"error: checkpoint {bad} is damaged or was not written by TrainSegmentNet.py: ") and \
        message in err, err
    assert "Use another copy (last.pt or best.pt) or start a new run" in err
    assert not (tmp_path / "run").exists()


def test_resume_from_a_checkpoint_whose_optimizer_state_does_not_fit(capsys, tmp_path, tiny_voc, trained):
    state = load_checkpoint(trained)
    first = next(iter(state["optimizer"]["state"]))
    state["optimizer"]["state"][first]["exp_avg"] = torch.zeros(3)
    save_checkpoint(state, tmp_path / "bad.pt")
    status, err = main_exit(capsys, TrainSegmentNet.main,
                            *train_args(tiny_voc, tmp_path / "run", resume=tmp_path / "bad.pt", epochs=2))
    assert status == 2 and "its optimizer state is damaged: exp_avg of a parameter of shape" in err, err
    assert not (tmp_path / "run").exists()
