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
- `open_regular` / `read_regular`: every file a tool reads (checkpoints, ONNX files, JSON, images) is
  opened without blocking and used only when it is a regular file of bounded size: a fifo would hang
  the reader, a link to /dev/zero would feed it without end.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError
from .jsonfile import loads as json_loads

OWNER_FILE = ".segmentnet-owner.json"
MAX_JSON_BYTES = 1 << 26  # any JSON file the tools read (metrics.jsonl of a long run with many classes: a few MB)


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


def is_plain(name) -> bool:
    """Whether plain_name would take `name`."""
    try:
        plain_name(name, "")
    except DataError:
        return False
    return True


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process (or no pid at all)
        return pid > 0 and not isinstance(pid, bool)
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that atomic_path made for `path` in processes that were killed
    outright (SIGKILL, power loss) before they could clean up: of our name pattern, a regular file,
    its process gone, and no process holding its lock (a writer in another container or on another
    host sharing the folder has a process id this machine does not know, but holds the lock)."""
    pattern = re.compile(re.escape(f".{path.stem}.tmp-") + r"([0-9]{1,10})" + re.escape(path.suffix) + r"\Z")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if not match or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        try:
            fd = os.open(path.parent / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # a link, gone, or not ours to read
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer holds it
                os.unlink(path.parent / name)
        except OSError:  # held, or not ours to remove (another user's, in a sticky folder): leave it
            pass
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path` (same suffix); rename it over `path` if the block succeeds.
    The temporary file is locked while it is written; those of this path left by killed processes are
    removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    lock = None
    try:
        lock = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)  # (held on the file, whoever opens it to write: see remove_stale_temporaries)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def owner_of(folder: Path) -> dict | None:
    """The ownership record of a folder, or None when no SegmentNet tool wrote it (or it is unreadable)."""
    try:
        record = read_json(Path(folder) / OWNER_FILE, "the ownership record")
    except (OSError, ValueError, DataError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("tool"), str) else None


def mark_owned(folder: Path, tool: str, **facts) -> None:
    """Record in `folder` that `tool` wrote it (facts: e.g. a run id)."""
    write_text_atomic(Path(folder) / OWNER_FILE, json.dumps({"tool": tool, **facts}))


def claim_folder(folder: Path, tool: str, what: str = "output folder") -> Path:
    """Make `folder` the output folder of `tool`: create it, or accept it when it is empty or was
    written by the same tool (check_claimable's refusals first). (A writer of the folder then makes
    each file with outputs.writing_into.)"""
    folder = check_claimable(folder, tool, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if owner_of(folder) is None:
            mark_owned(folder, tool)
    except OSError as exc:
        raise DataError(f"{what} {folder} cannot be made or written: {exc.strerror or exc} "
                        f"({exc.filename or folder}); check its permissions, or choose another path") from None
    return folder


def check_claimable(folder: Path, tool: str, what: str = "output folder") -> Path:
    """`folder` when claim_folder may take it for `tool`, checked before any work; DataError naming it
    when it is a file, a link (a planted one would lead the outputs and the ownership record anywhere,
    e.g. into a dataset), or a folder holding what another tool or a person wrote."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise DataError(f"{what} {folder} is a link to {os.readlink(folder)}, which does not exist; {tool} does not "
                        f"create folders at the end of a link. Remove the link, or choose another path")
    if folder.is_symlink():
        raise DataError(f"{what} {folder} is a link (to {os.readlink(folder)}); {tool} writes only into a real "
                        f"folder, never through a link, which could lead its outputs onto other files. Remove the "
                        f"link, or give the folder it leads to")
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
    except OSError as exc:
        raise DataError(f"{what} {folder} cannot be read: {exc.strerror or exc} ({exc.filename or folder}); check "
                        f"its permissions, or choose another path") from None
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


def open_regular(path, what: str, max_bytes: int | None = None):
    """A binary file object of `path` for reading, when it is a regular file (links followed) of at most
    `max_bytes`; DataError naming `what` when it is a fifo, a device or another special file, or too
    large. What it is is checked before it is opened (opening a device can act: a watchdog starts) and
    again on the descriptor, opened without blocking (a fifo swapped in between cannot hang the reader).
    OSErrors pass through."""
    _refuse_unless_regular(os.stat(path).st_mode, path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        _refuse_unless_regular(info.st_mode, path, what)
        if max_bytes is not None and info.st_size > max_bytes:
            raise DataError(f"{what} {path} is {info.st_size} bytes, more than the {max_bytes} such a file can be; "
                            f"it is not one SegmentNet wrote, or is damaged")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_unless_regular(mode: int, path, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise DataError(f"{what} {path} is a folder, not a file; give the file itself")
    if not stat.S_ISREG(mode):
        raise DataError(f"{what} {path} is a special file (a fifo, a device or a socket), not a regular file; "
                        f"SegmentNet reads and replaces only regular files (a fifo would hang it, a device feed it "
                        f"without end). Remove it or give another path")


def read_regular(path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes (open_regular's checks); the size is checked
    again while reading, for a file that grows."""
    with open_regular(path, what, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{what} {path} is more than {max_bytes} bytes; it is not one SegmentNet wrote, or is damaged")
    return data


def read_json(path, what: str):
    """A JSON file from outside, within one set of limits: a regular file of at most MAX_JSON_BYTES
    (open_regular; DataError), parsed by jsonfile.loads (ValueError: not UTF-8 or JSON, or nested too
    deeply, or an integer of too many digits). OSErrors pass through."""
    return json_loads(read_regular(path, what, MAX_JSON_BYTES))


def is_regular(path) -> bool:
    """Whether `path` is a regular file, links followed (not a fifo, a device, a folder; not missing)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
