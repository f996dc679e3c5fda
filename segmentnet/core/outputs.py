"""Where Predict.py, Evaluate.py and Report.py may write, on top of segmentnet.core.files.

- Never into input data: a prepared dataset (a folder holding dataset.json, or one that DataSeparate
  or DataExtract marked as theirs), an extraction (a folder holding DataExtract's marker
  MARKER) or any folder inside one, links resolved.
- A folder of outputs (Predict's --out, Report's pictures, Hypercolumns' masks) is claimed with
  files.claim_folder, and every file in it is written through `writing_into`: no folder on the way
  to it, nor the file itself, may be a link (one planted in the claimed folder would redirect the
  write, e.g. onto a dataset's ground truth), and it must lie inside the folder and outside input data.
- A single output file that lands in a folder the tool does not own (Evaluate's eval-*.json next to
  the checkpoint, Report's page) carries a signature, `signature(tool)`, in its first lines; an
  existing file at that path is replaced only when it carries the same tool's signature.
- A write that fails (disk full, no permission, a folder where a file should be) is a DataError
  naming the path.
"""
from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError
from .files import check_inside, open_regular, owner_of

DATA_TOOLS = ("DataSeparate", "DataExtract")   # owners of folders that hold input data
MARKER = ".extracted.json"                     # the record of a whole extraction (preparation.extraction)
HEAD_BYTES = 4096                              # a signature lies within a file's first bytes


def input_data_folder(path) -> Path | None:
    """The prepared dataset (or extracted data) folder that `path` is or lies inside, else None."""
    real = Path(path).resolve()
    for folder in (real, *real.parents):
        if (folder / "dataset.json").is_file() or (folder / MARKER).is_file():
            return folder
        record = owner_of(folder)
        if record is not None and record["tool"] in DATA_TOOLS:
            return folder
    return None


def refuse_input_data(path, what: str) -> Path:
    """`path` unless it is, or lies inside, a prepared dataset; DataError naming both otherwise."""
    data = input_data_folder(path)
    if data is not None:
        kind = "extracted data" if (data / MARKER).is_file() else "prepared dataset"
        raise DataError(f"{what} {path} is inside the {kind} {data}: results are never written into "
                        f"a dataset, where they could replace or be mistaken for its images and masks "
                        f"(ground truth). Choose a folder outside it")
    return Path(path)


def folder_not_file(folder, what: str) -> Path:
    """`folder` unless it is an existing file (a folder is made when needed); DataError naming it otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} {folder} is an existing file, not a folder; move it or choose another path")
    return folder


def signature(tool: str) -> str:
    """The line that marks a file as written by `tool` (e.g. 'Evaluate'), which may therefore replace it."""
    return f"written by SegmentNet's {tool}.py; running it again replaces this file"


def json_signed(record: dict, tool: str) -> str:
    """`record` as indented JSON, with the signature as its first entry ('note')."""
    return json.dumps({"note": signature(tool), **record}, indent=1)


def check_replaceable(path, tool: str, what: str = "output") -> Path:
    """`path` when it is new or a file `tool` wrote (it carries the signature); DataError otherwise.

    Also refuses a path inside a prepared dataset."""
    path = Path(path)
    refuse_input_data(path, what)
    if path.is_dir():
        raise DataError(f"{what} {path} is an existing folder, not a file; choose another path")
    if path.exists() or path.is_symlink():
        head = ""
        if not path.is_symlink():
            try:  # (a fifo or a device there is refused without blocking on it)
                with open_regular(path, what) as f:
                    head = f.read(HEAD_BYTES).decode("utf-8", "replace")
            except OSError:
                pass
        if path.is_symlink() or signature(tool) not in head:
            raise DataError(f"{what} {path} already exists and was not written by {tool}.py (it lacks the line "
                            f"'{signature(tool)}'); {tool}.py never overwrites such a file. Move or delete "
                            f"it, or choose another path")
    return path


class OutputWriteError(DataError):
    """An output file could not be written (disk full, no permission, its folder gone)."""


@contextmanager
def writing(path, then: str = ""):
    """Yields `path`; an OSError of the block (which writes it) becomes an OutputWriteError that names
    the file, the cause and what to do (write_advice), then `then` (e.g. how to resume). Outputs
    written before are whole (they are written atomically)."""
    try:
        yield Path(path)
    except OSError as exc:  # (the file that failed may lie inside `path`, a folder being written)
        failed = Path(exc.filename) if isinstance(exc.filename, str) else Path(path)
        inside = f" ({failed})" if failed != Path(path) else ""
        raise OutputWriteError(f"could not write {path}: {os_error_text(exc)}{inside}; {write_advice(failed, exc)}"
                               + (f", then {then}" if then else "")) from None


def os_error_text(exc: OSError) -> str:
    """'No space left on device (ENOSPC)'."""
    return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"


def write_advice(path: Path, exc: OSError) -> str:
    """What to do when writing `path` failed with `exc`: only a full disk or quota is about free space."""
    path = Path(path)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "Free space on that disk or choose another folder"
    if code == errno.ENOENT:
        return (f"The folder {path.parent} does not exist (any more: was it moved or deleted?): create it again "
                f"or choose another folder")
    if code == errno.EISDIR:
        return f"{path} is a folder, where the file must be written: move that folder away or choose another folder"
    if code == errno.ENOTDIR:
        return f"a part of the path {path.parent} is a file, not a folder: choose another folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"No permission to write in {path.parent}: allow it (chmod, chown) or choose another folder"
    if code == errno.EROFS:
        return f"{path.parent} is on a read-only file system: choose another folder"
    return "Check that disk (its system log may say more) or choose another folder"


@contextmanager
def writing_into(folder, relative, what: str = "output"):
    """Yields folder/relative for a tool that writes it inside `folder`, its claimed output folder
    (files.claim_folder), after making the folders on the way. Refused (DataError naming it): a folder
    on the way or the file itself that is a link, or not a folder (not a file); a file whose folder,
    links resolved, lies outside `folder` or inside input data. A failed write is a DataError too."""
    folder = Path(folder)
    path = folder / relative
    with writing(path):
        current = folder
        for part in Path(relative).parent.parts:
            current = current / part
            if current.is_symlink():
                raise DataError(f"{what} {current} is a link (to {os_readlink(current)}) inside the output folder "
                                f"{folder}; outputs are written only into real folders, never through a link, "
                                f"which could lead them onto other files (such as a dataset's masks). Remove "
                                f"the link, or choose a new --out")
            if current.exists() and not current.is_dir():
                raise DataError(f"{what} {current} is a file where a folder of outputs goes; move it away, or "
                                f"choose a new --out")
            current.mkdir(exist_ok=True)
        check_inside(folder, path.parent, what)
        refuse_input_data(path.parent, what)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            kind = f"a link (to {os_readlink(path)})" if path.is_symlink() else "not a regular file"
            raise DataError(f"{what} {path} is {kind}; an output replaces only a file it wrote, never a link or "
                            f"a folder. Remove it, or choose a new --out")
        yield path


def os_readlink(path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"
