"""Safe, idempotent, atomic extraction of an official archive (its members listed and checked by
archive.py first).

Members are written into a temporary folder beside the target, which is renamed into place only
when all is done; a marker file inside it records what was extracted (archive name, md5, and
whether it was DataExtract's synthetic archive), so a second run can say "already done", a real
archive replaces synthetic data (and never the reverse), and another archive is refused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..core.errors import DataError
from ..core.files import read_json
from ..core.outputs import MARKER  # (the guard that keeps outputs out of input data reads it too)
from .archive import (COPY_CHUNK, READ_ERRORS, WRITE_ERRNOS, Archive, Member, check_members, list_members, md5sum,
                      normalise_name, open_archive, wanted)


def _copy_bounded(src, dst_path: Path, limit: int, where: str) -> None:
    written = 0
    with open(dst_path, "wb") as dst:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            written += len(chunk)
            if written > limit:
                raise DataError(f"{where} expands beyond {limit} bytes; refusing to extract a suspicious archive")
            dst.write(chunk)


def _write_members(archive: Path, members: list[Member], spec: Archive, root: Path) -> None:
    """Write the members (as list_members gave them, checked) into root."""
    handle = open_archive(archive)
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
                                             if wanted(normalise_name(m.name, archive), spec)], filter="data")
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
        record = read_json(marker, "the extraction's marker")
    except (OSError, ValueError, DataError) as exc:
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
