"""Official archives: their description (Archive), checksum, and the listing and checking of their
members (download.py fetches them, extraction.py writes them out).

Every member is checked before anything is written: a member that would land outside
the target (absolute path, '..', a link pointing out), a device or fifo, a name given twice, or a
member larger than the dataset allows, an encrypted member or one compressed with a method Python
cannot read, a name or link target that is not UTF-8 or holds a NUL byte, is refused with the
member named.
"""
from __future__ import annotations

import errno
import hashlib
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.errors import DataError
from ..core.files import open_regular

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
        with open_regular(path, "the archive") as f:  # (a fifo would hang the reader, a device feed it for ever)
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


# ----------------------------------------------------------------------------- members


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


def normalise_name(name: str, archive: Path) -> str:
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


def open_archive(archive: Path):
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
    handle = open_archive(archive)
    try:
        if isinstance(handle, zipfile.ZipFile):
            for info in handle.infolist():
                file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 where the zip tool wrote none
                name = normalise_name(info.filename, archive)
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
                name = normalise_name(info.name, archive)
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


def wanted(name: str, spec: Archive) -> bool:
    """Whether a (normalised) member is extracted: all are, unless the archive names one folder."""
    return not spec.extract_only or name.startswith(spec.extract_only)
