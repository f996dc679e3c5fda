"""Writing files safely: names from data stay inside their folder, outputs appear whole or not at
all, and a tool writes only into folders it owns.

- `plain_name` / `child`: a name that comes from data (a split list's id, a member, a file name)
  must be one plain path component, and the path built from it must still lie inside its folder
  after links are resolved. Both raise DataError naming where the name came from.
- `atomic_path`: write to a temporary name in the same folder, rename over the target when done.
- Ownership: a tool that writes a folder leaves `OWNER_FILE` in it. `claim_folder` creates a folder
  for a tool, accepts one that the same tool wrote (or an empty one), and refuses any other folder,
  so nothing a user made by hand, or another tool wrote, is ever overwritten or deleted.
- `open_no_follow`: open a file a tool appends to or locks in place (not by renaming over it) without
  following a link planted at its name, and only when it is a regular file.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

OWNER_FILE = ".segmentnet-owner.json"


def plain_name(name: str, where: str) -> str:
    """`name` if it is a single, ordinary path component; DataError naming `where` otherwise."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name in (".", ".."):
        problem = "is '.' or '..'"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        problem = "is longer than a file name can be"
    if problem:
        raise DataError(f"{where}: the name {name!r} {problem}; only plain file names are allowed here, so "
                        f"that no file outside its folder can be read or written. The file is corrupt or was "
                        f"crafted: use the official data")
    return name


def check_inside(folder: Path, path: Path, where: str) -> Path:
    """`path` if, with every link resolved, it lies inside `folder`; DataError otherwise."""
    base = Path(folder).resolve()
    real = Path(path).resolve()
    if real != base and base not in real.parents:
        raise DataError(f"{where}: {path} leads to {real}, outside {base} (through a link or '..'); refusing "
                        f"to read or write it. The data is corrupt or was crafted: use the official data")
    return Path(path)


def child(folder: Path, name: str, where: str, suffix: str = "") -> Path:
    """folder / (name + suffix), with the name checked to be plain and the result to stay inside."""
    return check_inside(folder, Path(folder) / (plain_name(name, where) + suffix), where)


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path` (same suffix); rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def owner_of(folder: Path) -> dict | None:
    """The ownership record of a folder, or None when no SegmentNet tool wrote it (or it is unreadable)."""
    try:
        record = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("tool"), str) else None


def mark_owned(folder: Path, tool: str, **facts) -> None:
    """Record in `folder` that `tool` wrote it (facts: e.g. a run id)."""
    write_text_atomic(Path(folder) / OWNER_FILE, json.dumps({"tool": tool, **facts}))


def claim_folder(folder: Path, tool: str, what: str = "output folder") -> Path:
    """Make `folder` the output folder of `tool`: create it, or accept it when it is empty or was
    written by the same tool. Refuses a file, a link to nothing, or a folder holding anything else,
    naming it. (A writer of the folder then makes each file with outputs.writing_into.)"""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise DataError(f"{what} {folder} is a link to {os.readlink(folder)}, which does not exist; {tool} does not "
                        f"create folders at the end of a link. Remove the link, or choose another path")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} {folder} is an existing file, not a folder; choose another path")
    try:
        if folder.is_dir():
            record = owner_of(folder)
            if record is None and any(folder.iterdir()):
                raise DataError(f"{what} {folder} already holds files that {tool} did not write; it never writes "
                                f"into such a folder. Choose a new or empty folder")
            if record is not None and record["tool"] != tool:
                raise DataError(f"{what} {folder} was written by {record['tool']}, not {tool}; choose another folder")
        folder.mkdir(parents=True, exist_ok=True)
        if owner_of(folder) is None:
            mark_owned(folder, tool)
    except OSError as exc:
        raise DataError(f"{what} {folder} cannot be made or written: {exc.strerror or exc} "
                        f"({exc.filename or folder}); check its permissions, or choose another path") from None
    return folder


def open_no_follow(path, flags: int, what: str) -> int:
    """os.open(path, flags) without following a link at `path` (O_NOFOLLOW), for a file that is written
    in place; the descriptor only when it is a regular file. DataError naming `what` when `path` is a
    link or another kind of file (a link there, e.g. to ~/.bashrc in a copied folder, would make the
    tool truncate or append to its target). Other OSErrors (no permission, disk full) pass through."""
    path = Path(path)

    def refuse(kind: str):
        return DataError(f"{what} {path} is {kind}, where SegmentNet keeps a file of its own; it never writes "
                         f"through a link or into a special file, which could change the file linked to (or hang). "
                         f"Remove it, or choose another folder")

    # O_NONBLOCK: a fifo planted there must not block the open (it has no effect on regular files)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise refuse(f"a link (to {os.readlink(path)})") from None
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise refuse("a special file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse("not a regular file (a fifo, a device or another special file)")
    return fd
