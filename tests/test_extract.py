"""DataExtract: checksum, safe extraction, idempotence, download with resume, the synthetic archive."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

import DataExtract
from segmentnet import synthetic
from segmentnet.archive import MARKER, Archive, download, extract, md5sum, verify_md5
from segmentnet.cli import call_main
from segmentnet.datasets import DATASETS, voc2012
from segmentnet.errors import DataError

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
    from segmentnet.cli import call_main
    assert call_main(DataExtract.main, ["--downloads", str(tmp_path), "--data-dir", str(tmp_path / "data")]) == 2
    assert not (tmp_path / "data").exists()


def test_no_verify_skips_the_checksum(tmp_path):
    files = voc2012.synthetic_files(0, {"train": 2, "val": 1, "unlabelled": 0})
    from segmentnet import synthetic
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
    from segmentnet import archive as archive_module
    from segmentnet import synthetic

    path = synthetic.write_tar(tmp_path / "a.tar", voc2012.synthetic_files(0, {"train": 2, "val": 1, "unlabelled": 0}))

    def boom(*args, **kwargs):
        raise OSError("disk unplugged")

    monkeypatch.setattr(archive_module, "_write_members", boom)
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
