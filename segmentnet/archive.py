"""Official archives: checksum, resumable download, and safe, idempotent, atomic extraction.

Extraction checks every member before anything is written: a member that would land outside
the target (absolute path, '..', a link pointing out), a device or fifo, a name given twice, or a
member larger than the dataset allows, an encrypted member or one compressed with a method Python
cannot read, a name or link target that is not UTF-8 or holds a NUL byte, is refused with the
member named. Members are written into a temporary folder beside the target, which is renamed into
place only when all is done; a marker file inside it records what was extracted (archive name, md5,
and whether it was DataExtract's synthetic archive), so a second run can say "already done", a
real archive replaces synthetic data (and never the reverse), and another archive is refused.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError

MARKER = ".extracted.json"
COPY_CHUNK = 1 << 20

try:
    import lzma
except ImportError:  # a Python built without lzma: zipfile and tarfile cannot read xz either
    lzma = None
# What reading a damaged archive raises: the decompressors' own errors are no OSError.
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) + (
    (lzma.LZMAError,) if lzma else ())
# Zip compression methods this Python's zipfile can read (the others raise NotImplementedError).
ZIP_READABLE = {method for method, module in (
    (zipfile.ZIP_STORED, True), (zipfile.ZIP_DEFLATED, getattr(zipfile, "zlib", None)),
    (zipfile.ZIP_BZIP2, getattr(zipfile, "bz2", None)), (zipfile.ZIP_LZMA, getattr(zipfile, "lzma", None)),
) if module}
ZIP_ENCRYPTED = 0x1  # general purpose flag bit 0
# An OSError with one of these while extracting is the disk's fault, not the archive's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class Archive:
    """One official archive of a dataset."""
    filename: str                  # file name as published, looked for in the downloads folder
    md5: str | None                # published checksum, None where none is published
    url: str | None                # official address, None where a login is required
    required_prefix: str           # a member path every genuine archive has (tells datasets apart)
    max_member_bytes: int = 64 << 20  # no single file of the dataset is larger than this
    extract_only: str = ""         # extract only the members under this folder ("": all)

    @property
    def stem(self) -> str:
        name = self.filename
        for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name


def check_readable(path: Path) -> Path:
    """`path` if it is a file that can be read; DataError saying what is wrong otherwise."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DataError(f"{path} is a folder, not an archive file; pass the archive file itself "
                            f"(the .tar, .tar.gz or .zip) to --archive")
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise DataError(f"{path}: the archive cannot be read ({exc.strerror or exc}); check that it exists and "
                        f"that you may read it and the folders above it") from None
    return path


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    try:
        with open(check_readable(path), "rb") as f:
            for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: reading the archive failed ({exc.strerror or exc}); check the disk "
                        f"and run again") from None
    return digest.hexdigest()


def verify_md5(path: Path, expected: str | None) -> str:
    """Return the file's md5; raise DataError if it differs from the published one."""
    actual = md5sum(path)
    if expected and actual != expected:
        raise DataError(
            f"{path}: md5 is {actual}, the official archive's is {expected}. The file is incomplete, "
            f"corrupt or not the official archive: delete it and download it again "
            f"(or pass --no-verify if you know it is right)."
        )
    return actual


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(start, total) of a Content-Range header 'bytes START-END/TOTAL' (TOTAL may be '*');
    None when the header is missing or malformed."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "", re.ASCII)
    if not match or int(match[2]) < int(match[1]):
        return None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _content_length(value: str | None) -> int | None:
    """The body's length announced by a Content-Length header; None (unknown, read to the end of the
    connection, as http.client does) when it is missing or not a number."""
    return int(value) if value and re.fullmatch(r"\s*\d+\s*", value, re.ASCII) else None


def _request(url: str, start: int, dest: Path, timeout: float):
    """The server's response to a GET of url from byte `start`, or None when it answers 416 saying
    that the file is `start` bytes long (nothing is left to fetch)."""
    try:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # whole only if the server says so ('bytes */SIZE'); else start anew
            size = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", exc.headers.get("Content-Range") or "", re.ASCII)
            exc.close()
            return None if size and int(size[1]) == start else _request(url, 0, dest, timeout)
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(
            f"download of {url} failed: {exc}. Check the network and the address, pass a mirror with --url, "
            f"or put the archive into {dest.parent}/ yourself."
        ) from None


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch url to dest, resuming from dest + '.part' when the server supports ranges.

    A partial reply is appended only when its Content-Range starts exactly where the .part file
    ends; any other reply to a resume is fetched again whole, from byte 0.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
    except OSError as exc:
        raise DataError(f"cannot download into {dest.parent}: {exc.strerror or exc}; choose another "
                        f"--downloads folder") from None
    response = _request(url, have, dest, timeout)
    if response is None:  # the partial file is already whole
        os.replace(part, dest)
        return dest
    found = _content_range(response.headers.get("Content-Range")) if response.status == 206 else None
    if have and not (found and found[0] == have):
        if response.status != 200:  # a partial reply, but not of the part we miss: ask for all of it
            response.close()
            response = _request(url, 0, dest, timeout)
            found = None
        have = 0
    if response.status not in (200, 206) or (response.status == 206 and not (found and found[0] == have)):
        response.close()
        raise DataError(f"download of {url} failed: the server answered HTTP {response.status} "
                        f"{response.reason} to a request for the whole file")
    length = _content_length(response.headers.get("Content-Length"))
    total = found[1] if found and found[1] is not None else None if length is None else have + length
    with response:
        from tqdm import tqdm

        try:
            with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name
            ) as bar:
                for chunk in iter(lambda: response.read(COPY_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(f"download of {url} broke off ({exc!r}); run again to resume from {part}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise DataError(f"download of {url} stopped early ({size} of {total} bytes); run again to resume "
                        f"from {part}")
    if total is not None and size > total:
        part.unlink()
        raise DataError(f"download of {url} gave {size} bytes, more than the {total} the server announced; "
                        f"the partial file was removed: run again to download it anew")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------- extraction


@dataclass
class Member:
    name: str            # normalised relative path
    kind: str            # 'file', 'dir', 'symlink', 'hardlink', 'special'
    size: int
    link: str = ""       # link target for symlinks and hardlinks


def _plain_text(text: str, what: str) -> str:
    """`text` (a member's name or link target) if it can be a path: valid UTF-8 and no NUL byte."""
    problem = "contains a NUL byte" if "\x00" in text else None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # tarfile keeps undecodable bytes as surrogates
        problem = f"is not valid UTF-8 text ({text.encode('utf-8', 'surrogateescape')!r})"
    if problem:
        raise DataError(f"{what} {problem}; the official archives use plain names, so this one is corrupt or "
                        f"crafted: refusing to extract it. Use the official file")
    return text


def _normalise(name: str, archive: Path) -> str:
    _plain_text(name, f"{archive}: the name of member {name!r}")
    text = name.replace("\\", "/")
    pure = PurePosixPath(text)
    if pure.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{archive}: member {name!r} climbs out with '..'; refusing to extract this archive")
    return "/".join(parts)


def _resolve(path: str, links: set[str]) -> str | None:
    """A relative path with '..' resolved lexically; None when it climbs out of the target or
    passes through a symlink member (where the lexical answer and the real one can differ)."""
    if PurePosixPath(path).is_absolute():
        return None
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if parts and "/".join(parts) in links:
            return None
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _link_under(name: str, links: set[str]) -> str | None:
    """The symlink member that a member's own path passes through, if any."""
    parts = name.split("/")
    return next((p for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p in links), None)


def _open(archive: Path):
    check_readable(archive)
    try:
        if zipfile.is_zipfile(archive):
            return zipfile.ZipFile(archive)
        return tarfile.open(archive)
    except UnicodeDecodeError as exc:  # zipfile decodes names flagged UTF-8 as it opens the archive
        raise DataError(
            f"{archive}: member name {exc.object!r} is not valid UTF-8 text, though the archive says it is; "
            f"the archive is corrupt or crafted: refusing to extract it. Use the official file"
        ) from None
    except READ_ERRORS as exc:
        raise DataError(
            f"{archive}: not a readable tar or zip archive ({exc}). It is truncated or corrupt: "
            f"delete it and download it again."
        ) from None


def _zip_readable(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse, before anything is written, a member that zipfile could not read."""
    if info.flag_bits & ZIP_ENCRYPTED:
        raise DataError(f"{where} is encrypted; the official archives are not, and SegmentNet takes no "
                        f"passwords: refusing to extract this archive. Use the official file")
    if info.compress_type not in ZIP_READABLE:
        method = {9: "Deflate64"}.get(info.compress_type) or zipfile.compressor_names.get(info.compress_type,
                                                                                         "unknown")
        raise DataError(f"{where} is compressed with method {info.compress_type} ({method}), which Python's "
                        f"zipfile cannot read; use the official file, or repack the archive with plain deflate "
                        f"(e.g. Info-ZIP's `zip -r`)")


def list_members(archive: Path) -> list[Member]:
    """Every member of a tar or zip archive, checked; raises DataError naming the first bad one."""
    members: list[Member] = []
    handle = _open(archive)
    try:
        if isinstance(handle, zipfile.ZipFile):
            for info in handle.infolist():
                file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 where the zip tool wrote none
                name = _normalise(info.filename, archive)
                if file_type == stat.S_IFLNK:
                    kind = "symlink"
                elif info.is_dir():
                    kind = "dir"
                elif file_type not in (0, stat.S_IFREG):
                    kind = "special"
                else:
                    kind = "file"
                where = f"{archive}: member {name!r}"
                if kind in ("file", "symlink"):
                    _zip_readable(info, where)
                link = handle.read(info).decode("utf-8", "surrogateescape") if kind == "symlink" else ""
                members.append(Member(name, kind, info.file_size, _plain_text(link, f"{where}: its link target")))
        else:
            for info in handle:  # iterating reads the whole archive: a truncated one fails here
                name = _normalise(info.name, archive)
                if info.issym():
                    kind = "symlink"
                elif info.islnk():
                    kind = "hardlink"
                elif info.isdir():
                    kind = "dir"
                elif info.isreg():
                    kind = "file"
                else:
                    kind = "special"
                members.append(Member(name, kind, info.size,
                                      _plain_text(info.linkname, f"{archive}: member {name!r}: its link target")))
            # A tar cut at a member boundary reads as a shorter archive: only the end-of-archive
            # block (zeros) that every tar writer appends tells the two apart.
            handle.fileobj.seek(handle.offset)
            if len(handle.fileobj.read(tarfile.BLOCKSIZE)) < tarfile.BLOCKSIZE:
                raise DataError(f"{archive}: the archive stops after {len(members)} members without tar's "
                                f"end-of-archive block; it is truncated: delete it and download it again.")
            # Reading to the end makes a compressed tar check its stream's own checksum (gzip's CRC).
            while handle.fileobj.read(COPY_CHUNK):
                pass
    except READ_ERRORS as exc:
        raise DataError(
            f"{archive}: the archive is truncated or corrupt ({exc}); delete it and download it again."
        ) from None
    finally:
        handle.close()
    return members


def check_members(archive: Path, members: list[Member], spec: Archive) -> None:
    seen: set[str] = set()
    links = {m.name for m in members if m.kind == "symlink"}
    for m in members:
        where = f"{archive}: member {m.name!r}"
        if not m.name and m.kind != "dir":
            raise DataError(f"{where} is a {m.kind} without a name (nothing is left once '.' and '/' are removed); "
                            f"refusing to extract this archive: it is corrupt or crafted")
        if m.kind == "special":
            raise DataError(f"{where} is a device, fifo or other special file; refusing to extract this archive")
        if _link_under(m.name, links):
            raise DataError(f"{where} lies beneath the symlink {_link_under(m.name, links)!r}, so it could be "
                            f"written anywhere; refusing to extract this archive")
        if m.kind == "symlink" and _resolve(str(PurePosixPath(m.name).parent / m.link), links) is None:
            raise DataError(f"{where} is a link pointing outside the target ({m.link!r}); refusing to extract")
        if m.kind == "hardlink" and _resolve(m.link, links) is None:
            raise DataError(f"{where} is a hard link to {m.link!r} outside the target; refusing to extract")
        if m.kind != "dir":
            if m.name in seen:
                raise DataError(f"{where} appears twice; a genuine archive names each file once. Refusing to extract")
            seen.add(m.name)
        if m.size > spec.max_member_bytes and wanted(m.name, spec):
            raise DataError(
                f"{where} is {m.size} bytes, more than any file of this dataset "
                f"({spec.max_member_bytes} bytes); refusing to extract a suspicious archive"
            )
    if not any(m.name == spec.required_prefix.rstrip("/") or m.name.startswith(spec.required_prefix)
               for m in members):
        raise DataError(
            f"{archive}: no member under {spec.required_prefix!r}, which the official {spec.filename} has. "
            f"This is an archive of another dataset, or a repacked one: use the official file."
        )


def _copy_bounded(src, dst_path: Path, limit: int, where: str) -> None:
    written = 0
    with open(dst_path, "wb") as dst:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            written += len(chunk)
            if written > limit:
                raise DataError(f"{where} expands beyond {limit} bytes; refusing to extract a suspicious archive")
            dst.write(chunk)


def wanted(name: str, spec: Archive) -> bool:
    """Whether a (normalised) member is extracted: all are, unless the archive names one folder."""
    return not spec.extract_only or name.startswith(spec.extract_only)


def _write_members(archive: Path, members: list[Member], spec: Archive, root: Path) -> None:
    """Write the members (as list_members gave them, checked) into root."""
    handle = _open(archive)
    try:
        if isinstance(handle, zipfile.ZipFile):
            infos = handle.infolist()
            if len(infos) != len(members):
                raise DataError(f"{archive}: the archive changed while it was being extracted; run again")
            for info, member in zip(infos, members):
                # no name: the target folder itself (a 'dir' member: check_members refuses others)
                if not member.name or not wanted(member.name, spec):
                    continue
                dest = root / member.name
                if member.kind == "dir":
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if member.kind == "symlink":
                    os.symlink(member.link, dest)
                    continue
                with handle.open(info) as src:
                    _copy_bounded(src, dest, spec.max_member_bytes, f"{archive}: member {member.name!r}")
        else:
            # The 'data' filter repeats our checks inside tarfile itself (belt and braces).
            handle.extractall(root, members=[m for m in handle.getmembers()
                                             if wanted(_normalise(m.name, archive), spec)], filter="data")
    except READ_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise DataError(f"cannot write the extraction of {archive} into {root.parent}: {exc.strerror}; free "
                            f"space, or choose another --data-dir, then run again") from None
        raise DataError(f"{archive}: extraction failed ({exc}); the archive is truncated or corrupt") from None
    finally:
        handle.close()


MARKER_FIELDS = {"archive": str, "md5": str, "synthetic": bool, "members": int}


def read_marker(target: Path) -> dict | None:
    """The record DataExtract left in target's marker: archive (name), md5, synthetic (whether it was
    DataExtract's synthetic archive) and members. None when there is no marker; DataError when it
    cannot be read, is corrupt, or was written by an older DataExtract that recorded less."""
    marker = Path(target) / MARKER
    try:
        if not (marker.exists() or marker.is_symlink()):
            return None
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        problem = f"it cannot be read as JSON ({reason})"
    else:
        problem = None
        if not isinstance(record, dict):
            problem = f"it holds a JSON {type(record).__name__}, not an object"
        elif isinstance(record.get("archive"), str) and "synthetic" not in record:
            raise DataError(f"{marker} was written by an older DataExtract, which did not record whether {target} "
                            f"holds synthetic data nor always the archive's md5, so it cannot be told which archive "
                            f"is there: remove {target} and run DataExtract.py again")
        else:
            wrong = [f"{key} {record.get(key)!r}" for key, kind in MARKER_FIELDS.items()
                     if not isinstance(record.get(key), kind) or (kind is int and isinstance(record.get(key), bool))]
            if not wrong and not re.fullmatch(r"[0-9a-f]{32}", record["md5"]):
                wrong = [f"md5 {record['md5']!r}"]
            problem = f"wrong or missing {', '.join(wrong)}" if wrong else None
    if problem:
        raise DataError(f"{marker} is not a marker DataExtract wrote: {problem}. It is corrupt or was edited, so "
                        f"it cannot be told what {target} holds: remove {target} (it holds only extracted "
                        f"files) and run DataExtract.py again")
    return record


def _replace_folder(new: Path, target: Path) -> None:
    """Put the folder `new` in place of the folder `target`, deleting the old one once `new` is there."""
    old = new.with_name(new.name.replace(".partial-", ".replaced-"))
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def extract(archive: Path, target: Path, spec: Archive, checksum: str | None = None,
            synthetic: bool = False) -> bool:
    """Extract archive into target; `checksum` is the archive's md5 where the caller has it already,
    `synthetic` says it is DataExtract's synthetic archive.

    Returns False, writing nothing, when target already holds this archive's extraction (the same
    name, md5 and synthetic-ness). A synthetic extraction, which DataExtract wrote itself, is
    replaced by a real archive or another synthetic one; a real extraction is never replaced:
    synthetic data or another archive is refused.
    """
    archive, target = Path(archive), Path(target)
    done = read_marker(target)
    if done is None and (target.exists() or target.is_symlink()):
        raise DataError(
            f"{target} exists but is not a complete extraction (no {MARKER}); it is left from an "
            f"interrupted run or made by hand: remove it and run again"
        )
    if done is not None:
        if synthetic and not done["synthetic"]:
            raise DataError(
                f"{target} holds the extraction of the real {done['archive']}, and synthetic data never replaces "
                f"real data: extract the synthetic archive into another folder (e.g. --data-dir data-synthetic), "
                f"or remove {target} if you no longer want the real data"
            )
        checksum = checksum or md5sum(archive)
        if (done["synthetic"], done["archive"], done["md5"]) == (synthetic, archive.name, checksum):
            return False
        if not done["synthetic"]:
            raise DataError(
                f"{target} already holds an extraction of {done['archive']} (md5 {done['md5']}), not of "
                f"{archive} (md5 {checksum}); remove that folder to extract {archive.name} there instead"
            )
    members = list_members(archive)
    check_members(archive, members, spec)
    checksum = checksum or md5sum(archive)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise DataError(f"cannot write into {target.parent} ({exc.strerror or exc}); choose another --data-dir "
                        f"or make that folder writable") from None
    try:
        _write_members(archive, members, spec, tmp)
        (tmp / MARKER).write_text(json.dumps({"archive": archive.name, "md5": checksum, "synthetic": synthetic,
                                              "members": len(members)}))
        if done is None:
            os.replace(tmp, target)
        else:  # DataExtract's own synthetic extraction
            _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
