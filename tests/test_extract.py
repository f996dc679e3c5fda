"""DataExtract: checksum, safe extraction, idempotence, download with resume, the synthetic archive."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import (ROOT, SETS, TINY_COUNTS, VOC, leftovers, run_script, script_process, unprivileged,
                      write_tar_members, write_zip_members)

import DataExtract
from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.core.outputs import MARKER
from segmentnet.datasets import DATASETS, voc2012
from segmentnet.preparation import synthetic
from segmentnet.preparation.archive import Archive, md5sum, verify_md5
from segmentnet.preparation.download import download
from segmentnet.preparation.extraction import extract

SPEC = Archive("test.tar", None, None, required_prefix="VOCdevkit/", max_member_bytes=1 << 20)


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("VOCdevkit/ok.txt"), io.BytesIO(b""))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member,problem", [
    ((tarfile.TarInfo("/tmp/evil_abs.txt"), b"x"), "absolute path"),
    ((tarfile.TarInfo("VOCdevkit/../../evil_dotdot.txt"), b"x"), "'..'"),
    ((link("VOCdevkit/escape", "../../outside"), None), "link pointing outside"),
    ((link("VOCdevkit/escape", "/etc/passwd"), None), "link pointing outside"),
    ((link("VOCdevkit/hard", "../../outside", tarfile.LNKTYPE), None), "hard link"),
])
def test_malicious_tar_refused_and_nothing_written(tmp_path, member, problem):
    archive = make_tar(tmp_path / "evil.tar", [member])
    target = tmp_path / "deep" / "data" / "raw" / "x"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(DataError, match=problem):
        extract(archive, target, SPEC)
    assert set(tmp_path.rglob("*")) == before  # not a single file anywhere, inside or out
    assert not Path("/tmp/evil_abs.txt").exists()


def test_md5_mismatch_refused(tmp_path):
    path = tmp_path / "VOCtrainval_11-May-2012.tar"
    path.write_bytes(b"not the archive")
    with pytest.raises(DataError, match="md5 is .* the official archive's is 6cd6e144f989b92b3379bac3b3de84fd"):
        verify_md5(path, voc2012.ARCHIVE.md5)
    from segmentnet.core.cli import call_main
    assert call_main(DataExtract.main, ["--downloads", str(tmp_path), "--data-dir", str(tmp_path / "data")]) == 2
    assert not (tmp_path / "data").exists()


def test_no_verify_skips_the_checksum(tmp_path):
    files = voc2012.synthetic_files(0, {"train": 2, "val": 1, "unlabelled": 0})
    from segmentnet.preparation import synthetic
    synthetic.write_tar(tmp_path / voc2012.ARCHIVE.filename, files)
    with pytest.raises(DataError):
        DataExtract.main(["--downloads", str(tmp_path), "--data-dir", str(tmp_path / "data")])
    DataExtract.main(["--downloads", str(tmp_path), "--data-dir", str(tmp_path / "data"), "--no-verify"])
    assert (tmp_path / "data/raw/VOCtrainval_11-May-2012/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").exists()


def test_synthetic_archive_is_official_layout_deterministic_and_idempotent(tmp_path, capsys):
    args = ["--synthetic", "--downloads", str(tmp_path / "dl"), "--data-dir", str(tmp_path / "data"), "--seed", "3"]
    assert DataExtract.main(args) == 0
    archive = tmp_path / "dl" / "synthetic" / "VOCtrainval_11-May-2012.tar"
    first = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "data/raw/VOCtrainval_11-May-2012/VOCdevkit/VOC2012"
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    trainval = (root / "ImageSets/Segmentation/trainval.txt").read_text().split()
    assert sorted(train + val) == trainval and not set(train) & set(val)
    assert all((root / "JPEGImages" / f"{i}.jpg").exists() and (root / "SegmentationClass" / f"{i}.png").exists()
               for i in trainval)
    assert len(list((root / "JPEGImages").glob("*.jpg"))) > len(trainval)  # unlabelled images too
    capsys.readouterr()
    assert DataExtract.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert hashlib.md5(archive.read_bytes()).hexdigest() == first


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from segmentnet.preparation import extraction, synthetic

    path = synthetic.write_tar(tmp_path / "a.tar", voc2012.synthetic_files(0, {"train": 2, "val": 1, "unlabelled": 0}))

    def boom(*args, **kwargs):
        raise OSError("disk unplugged")

    monkeypatch.setattr(extraction, "_write_members", boom)
    with pytest.raises(OSError):
        extract(path, tmp_path / "raw" / "voc", voc2012.ARCHIVE)
    assert not (tmp_path / "raw" / "voc").exists()
    assert list((tmp_path / "raw").iterdir()) == []


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    fail_after: int | None = None  # close the connection after this many bytes (first request only)
    requests: list = []

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        self.requests.append(header)
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.fail_after is not None and not header:
            self.wfile.write(body[: self.fail_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_download_resumes_a_partial_file(tmp_path):
    payload = bytes(range(256)) * 4096
    RangeHandler.payload, RangeHandler.fail_after, RangeHandler.requests = payload, 100_000, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/VOCtrainval_11-May-2012.tar"
    dest = tmp_path / "dl" / "VOCtrainval_11-May-2012.tar"
    try:
        with pytest.raises(DataError):
            download(url, dest)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size
        assert 0 < have < len(payload) and not dest.exists()
        download(url, dest)
    finally:
        server.shutdown()
    assert dest.read_bytes() == payload
    assert RangeHandler.requests == [None, f"bytes={have}-"]  # the second request asked only for the rest


# ----------------------------------------------------------------------------- real and synthetic data

TINY = {"train": 2, "val": 1, "unlabelled": 0}
TARGET = Path("data/raw") / voc2012.ARCHIVE.stem
TRAIN_TXT = f"{voc2012.ROOT}/ImageSets/Segmentation/train.txt"


def extract_exit(capsys, tmp_path, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python DataExtract.py --downloads dl --data-dir data args`."""
    capsys.readouterr()
    status = call_main(DataExtract.main, ["--downloads", str(tmp_path / "dl"), "--data-dir", str(tmp_path / "data"),
                                         *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


def marker(tmp_path) -> dict:
    return json.loads((tmp_path / TARGET / MARKER).read_text())


@pytest.fixture
def real_voc(tmp_path, monkeypatch) -> Path:
    """The genuine archive in dl/, as far as DataExtract can tell: VOC's layout, and the published md5."""
    path = synthetic.write_tar(tmp_path / "dl" / voc2012.ARCHIVE.filename, voc2012.synthetic_files(7, TINY))
    spec = dataclasses.replace(voc2012.ARCHIVE, md5=md5sum(path))
    monkeypatch.setitem(DATASETS, "voc2012", dataclasses.replace(DATASETS["voc2012"], archives=(spec,)))
    return path


def member_bytes(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read()


def test_real_archive_replaces_synthetic_data(capsys, tmp_path, real_voc):
    """Issue 12: after --synthetic, the genuine archive was 'already extracted; nothing to do'."""
    assert extract_exit(capsys, tmp_path, "--synthetic")[0] == 0
    assert marker(tmp_path)["synthetic"] is True
    status, out, err = extract_exit(capsys, tmp_path)  # the md5 is checked, and matches
    assert status == 0, err
    assert "replacing the synthetic data" in out and "nothing to do" not in out
    with tarfile.open(real_voc) as tar:
        members = len(tar.getmembers())
    assert marker(tmp_path) == {"archive": real_voc.name, "md5": md5sum(real_voc), "synthetic": False,
                                "members": members}
    assert (tmp_path / TARGET / TRAIN_TXT).read_bytes() == member_bytes(real_voc, TRAIN_TXT)
    assert sorted(p.name for p in (tmp_path / "data/raw").iterdir()) == [TARGET.name]  # the old one is gone
    status, out, _ = extract_exit(capsys, tmp_path)
    assert status == 0 and "nothing to do" in out


def test_synthetic_data_never_replaces_a_real_extraction(capsys, tmp_path, real_voc):
    assert extract_exit(capsys, tmp_path)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    status, out, err = extract_exit(capsys, tmp_path, "--synthetic")
    assert status == 2, out
    assert err.startswith(f"error: {tmp_path / TARGET} holds the extraction of the real {real_voc.name}, and "
                          f"synthetic data never replaces real data"), err
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()} == before


def test_another_synthetic_seed_replaces_the_synthetic_data(capsys, tmp_path):
    assert extract_exit(capsys, tmp_path, "--synthetic", "--seed", 1)[0] == 0
    status, out, err = extract_exit(capsys, tmp_path, "--synthetic", "--seed", 2)
    assert status == 0 and "replacing the synthetic data" in out, err
    archive = tmp_path / "dl" / "synthetic" / voc2012.ARCHIVE.filename  # now seed 2's
    assert marker(tmp_path)["md5"] == md5sum(archive) and marker(tmp_path)["synthetic"] is True
    assert (tmp_path / TARGET / TRAIN_TXT).read_bytes() == member_bytes(archive, TRAIN_TXT)


def test_an_archive_with_another_md5_does_not_match_the_extraction(capsys, tmp_path):
    """Unverified (--no-verify), the md5 is still recorded and compared: another archive is refused."""
    archive = synthetic.write_tar(tmp_path / "dl" / voc2012.ARCHIVE.filename, voc2012.synthetic_files(1, TINY))
    first = md5sum(archive)
    assert extract_exit(capsys, tmp_path, "--no-verify")[0] == 0
    assert marker(tmp_path)["md5"] == first and marker(tmp_path)["synthetic"] is False
    before = (tmp_path / TARGET / TRAIN_TXT).read_bytes()
    synthetic.write_tar(archive, voc2012.synthetic_files(2, TINY))
    status, out, err = extract_exit(capsys, tmp_path, "--no-verify")
    assert status == 2, out
    assert f"already holds an extraction of {archive.name} (md5 {first}), not of {archive} (md5 {md5sum(archive)})" \
        in err and "remove that folder" in err
    assert (tmp_path / TARGET / TRAIN_TXT).read_bytes() == before


# ----------------------------------------------------------------------------- hostile servers


@contextmanager
def http_server(respond):
    """A server on 127.0.0.1 whose answer to each GET is respond(Range header) -> (status, headers, body).
    Yields (url, the Range header of each request)."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):  # HTTP/1.0: the connection closes after each reply
        def do_GET(self):
            requests.append(self.headers.get("Range"))
            status, headers, body = respond(self.headers.get("Range"))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{voc2012.ARCHIVE.filename}", requests
    finally:
        server.shutdown()
        server.server_close()


PAYLOAD = bytes(range(256)) * 64
HAVE = 5000  # bytes already in the .part file


def partial(tmp_path) -> Path:
    dest = tmp_path / "dl" / voc2012.ARCHIVE.filename
    dest.parent.mkdir()
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD[:HAVE])
    return dest


@pytest.mark.parametrize("content_range", [f"bytes 0-{len(PAYLOAD) - 1}/{len(PAYLOAD)}", None, "bytes */100"])
def test_download_restarts_when_a_partial_reply_does_not_start_at_the_offset(tmp_path, content_range):
    """The server answers 206 to the resume, but with the file from byte 0 (or no Content-Range to
    tell where its body starts): that body is not appended; the whole file is fetched again."""
    def respond(range_header):
        if range_header is None:
            return 200, {"Content-Length": str(len(PAYLOAD))}, PAYLOAD
        return 206, {"Content-Length": str(len(PAYLOAD)), **({"Content-Range": content_range} if content_range
                                                               else {})}, PAYLOAD

    dest = partial(tmp_path)
    with http_server(respond) as (url, requests):
        download(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert requests == [f"bytes={HAVE}-", None]
    assert not dest.with_name(dest.name + ".part").exists()


def test_download_refuses_a_server_that_never_sends_the_asked_bytes(tmp_path):
    def respond(range_header):
        return 206, {"Content-Range": f"bytes 10-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"}, PAYLOAD[10:]

    dest = partial(tmp_path)
    with http_server(respond) as (url, requests), pytest.raises(DataError, match="answered HTTP 206 Partial "
                                                                                 "Content to a request for the whole"):
        download(url, dest)
    assert requests == [f"bytes={HAVE}-", None] and not dest.exists()


def test_download_refuses_more_bytes_than_announced(tmp_path):
    def respond(range_header):
        return 206, {"Content-Range": f"bytes {HAVE}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"}, PAYLOAD[HAVE:] + b"extra"

    dest = partial(tmp_path)
    with http_server(respond) as (url, _), pytest.raises(DataError, match=f"gave {len(PAYLOAD) + 5} bytes, more "
                                                                          f"than the {len(PAYLOAD)} the server"):
        download(url, dest)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


@pytest.mark.parametrize("part_is", ["whole", "longer than the file"])
def test_download_416_is_trusted_only_when_it_gives_the_partial_file_s_size(tmp_path, part_is):
    def respond(range_header):
        if range_header is None:
            return 200, {"Content-Length": str(len(PAYLOAD))}, PAYLOAD
        return 416, {"Content-Range": f"bytes */{len(PAYLOAD)}"}, b""

    dest = tmp_path / "dl" / voc2012.ARCHIVE.filename
    dest.parent.mkdir()
    part = PAYLOAD if part_is == "whole" else PAYLOAD + b"junk"
    dest.with_name(dest.name + ".part").write_bytes(part)
    with http_server(respond) as (url, requests):
        download(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert requests == [f"bytes={len(part)}-"] + ([] if part_is == "whole" else [None])


def test_content_length_that_is_not_a_number_is_an_unknown_length(capsys, tmp_path):
    """As http.client does, the body is then read to the end of the connection; the md5 check
    (skipped here) is what tells a whole archive from a partial one."""
    archive = synthetic.write_tar(tmp_path / "src" / voc2012.ARCHIVE.filename, voc2012.synthetic_files(0, TINY))
    body = archive.read_bytes()

    def respond(range_header):
        return 200, {"Content-Length": "12 kB"}, body

    with http_server(respond) as (url, _):
        status, out, err = extract_exit(capsys, tmp_path, "--download", "--url", url, "--no-verify")
    assert status == 0, err
    assert (tmp_path / "dl" / archive.name).read_bytes() == body
    assert (tmp_path / TARGET / TRAIN_TXT).exists()


# ----------------------------------------------------------------------------- hostile and damaged archives


def assert_extract_refused(tmp_path, archive: Path, message: str, *extra) -> str:
    data = tmp_path / "data"
    status, err = run_script(DataExtract.main, ["--archive", archive, "--data-dir", data, *extra])
    assert status == 2, err
    assert err.startswith("error: ") and str(archive) in err, err
    assert message in err, err
    assert leftovers(data) == [], "a refused archive must leave nothing under data/"
    return err


def test_missing_archive_says_where_to_put_it(tmp_path):
    result = script_process("DataExtract.py", "--downloads", tmp_path / "dl", "--data-dir", tmp_path / "data",
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
    err = assert_extract_refused(tmp_path, voc_tar, f"the official archive's is {VOC.md5}")
    assert "download it again" in err


def test_corrupt_archive(capsys, tmp_path):
    junk = tmp_path / VOC.filename
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert_extract_refused(tmp_path, junk, "not a readable tar or zip archive", "--no-verify")


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
    assert_extract_refused(tmp_path, truncated, "truncated", "--no-verify")


def test_truncated_zip(capsys, tmp_path):
    archive = synthetic.write_zip(tmp_path / "voc.zip", voc2012.synthetic_files(0, TINY_COUNTS))
    archive.write_bytes(archive.read_bytes()[:-300])
    assert_extract_refused(tmp_path, archive, "truncated or corrupt", "--no-verify")


def test_archive_of_another_dataset(capsys, tmp_path):
    other = synthetic.write_tar(tmp_path / VOC.filename, {"ADEChallengeData2016/images/training/a.jpg": b"x"})
    assert_extract_refused(tmp_path, other, f"no member under {SETS + '/'!r}", "--no-verify")


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
    err = assert_extract_refused(tmp_path, archive, message, "--no-verify")
    assert f"member {member!r}" in err, err
    # Nothing was written anywhere: refused before a single member is.
    assert sorted(p.name for p in tmp_path.rglob("*")) == [archive.name, "downloads"]
    assert not Path("/tmp/segmentnet-evil").exists()


def test_symlinks_inside_the_target_are_kept(tmp_path):
    """The checks refuse escapes only: a link between two members of the archive is extracted."""
    members = [GENUINE, ("VOCdevkit/alias.txt", "symlink", "VOC2012/ImageSets/Segmentation/train.txt")]
    for writer, name in ((write_tar_members, VOC.filename), (write_zip_members, "voc.zip")):
        data = tmp_path / f"data-{name}"
        status, err = run_script(DataExtract.main, ["--archive", writer(tmp_path / name, members), "--data-dir", data,
                                                    "--no-verify"])
        assert status == 0, err
        assert (data / "raw" / VOC.stem / "VOCdevkit" / "alias.txt").read_bytes() == GENUINE[2]


def test_zip_written_without_file_types_extracts(tmp_path):
    """Python's zipfile (and Windows tools) record no file type in a member's mode: still a plain file."""
    archive = tmp_path / "voc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, payload in voc2012.synthetic_files(0, TINY_COUNTS).items():
            zf.writestr(zipfile.ZipInfo(name), payload)  # a bare ZipInfo: no file-type bits at all
    with zipfile.ZipFile(archive) as zf:
        assert all(stat.S_IFMT(info.external_attr >> 16) == 0 for info in zf.infolist())
    status, err = run_script(DataExtract.main, ["--archive", archive, "--data-dir", tmp_path / "data", "--no-verify"])
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
        assert_extract_refused(tmp_path, archive, f"more than any file of this dataset "
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
    assert_extract_refused(tmp_path, path, "extraction failed (Bad CRC-32", "--no-verify")


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
    err = assert_extract_refused(tmp_path, archive, message, "--no-verify")
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
    assert_extract_refused(tmp_path, archive, message, "--no-verify")
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
    assert_extract_refused(tmp_path, archive, message, "--no-verify")


@pytest.mark.parametrize("case", ["a folder", "a name too long", "a fifo", "a link to a device"])
def test_archive_path_that_is_no_readable_file(capsys, tmp_path, case, no_hang):
    if case == "a folder":
        path, message = tmp_path / VOC.filename, "is a folder, not an archive file; pass the archive file itself"
        path.mkdir()
    elif case == "a name too long":
        path, message = tmp_path / ("x" * 300 + ".tar"), "cannot be looked at (File name too long)"
    else:  # a fifo would hang the reader, a device feed it for ever
        path, message = tmp_path / VOC.filename, "is a special file (a fifo, a device or a socket)"
        os.mkfifo(path) if case == "a fifo" else path.symlink_to("/dev/zero")
    with no_hang(60):
        assert_extract_refused(tmp_path, path, message)  # with the md5 check, which read it first


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


def test_data_dir_that_cannot_be_written(tmp_path, voc_tar):
    (tmp_path / "data").write_text("a file, not a folder")
    status, err = run_script(DataExtract.main, ["--archive", voc_tar, "--data-dir", tmp_path / "data", "--no-verify"])
    assert status == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot write into {tmp_path / 'data' / 'raw'} (Not a directory); choose another "
                          f"--data-dir"), err


def test_disk_full_during_extraction_is_not_blamed_on_the_archive(capsys, tmp_path, monkeypatch):
    import errno

    from segmentnet.preparation import extraction

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extraction, "_copy_bounded", disk_full)
    archive = synthetic.write_zip(tmp_path / "voc.zip", voc2012.synthetic_files(0, TINY_COUNTS))
    err = assert_extract_refused(tmp_path, archive, f"cannot write the extraction of {archive} into "
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
def test_corrupt_extraction_marker(tmp_path, voc_tar, case):
    data = tmp_path / "data"
    target, args = data / "raw" / VOC.stem, ("--archive", voc_tar, "--data-dir", data, "--no-verify")
    status, err = run_script(DataExtract.main, [*args])
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
    status, err = run_script(DataExtract.main, [*args])
    assert status == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {message}") and f"remove {target} " in err, err
    assert sorted(target.rglob("*")) == before
