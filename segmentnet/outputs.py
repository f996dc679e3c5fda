"""Where Predict.py, Evaluate.py and Report.py may write, on top of segmentnet.files.

- Never into input data: a prepared dataset (a folder holding dataset.json, or one that DataSeparate
  or DataExtract marked as theirs) or any folder inside one, links resolved.
- A folder of outputs (Predict's --out, Report's pictures) is claimed with files.claim_folder.
- A single output file that lands in a folder the tool does not own (Evaluate's eval-*.json next to
  the checkpoint, Report's page) carries a signature, `signature(tool)`, in its first lines; an
  existing file at that path is replaced only when it carries the same tool's signature.
- A write that fails (disk full, no permission, a folder where a file should be) is a DataError
  naming the path.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError
from .files import owner_of

DATA_TOOLS = ("DataSeparate", "DataExtract")   # owners of folders that hold input data
HEAD_BYTES = 4096                              # a signature lies within a file's first bytes


def input_data_folder(path) -> Path | None:
    """The prepared dataset (or extracted data) folder that `path` is or lies inside, else None."""
    real = Path(path).resolve()
    for folder in (real, *real.parents):
        if (folder / "dataset.json").is_file():
            return folder
        record = owner_of(folder)
        if record is not None and record["tool"] in DATA_TOOLS:
            return folder
    return None


def refuse_input_data(path, what: str) -> Path:
    """`path` unless it is, or lies inside, a prepared dataset; DataError naming both otherwise."""
    data = input_data_folder(path)
    if data is not None:
        raise DataError(f"{what} {path} is inside the prepared dataset {data}: results are never written into "
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
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES).decode("utf-8", "replace")
        except OSError:
            head = ""
        if path.is_symlink() or signature(tool) not in head:
            raise DataError(f"{what} {path} already exists and was not written by {tool}.py (it lacks the line "
                            f"'{signature(tool)}'); {tool}.py never overwrites such a file. Move or delete "
                            f"it, or choose another path")
    return path


@contextmanager
def writing(path):
    """Yields `path`; a write to it that fails becomes a DataError naming it (outputs written before are whole)."""
    try:
        yield Path(path)
    except OSError as exc:
        raise DataError(f"could not write {path}: {exc.strerror or exc} ({exc.filename or path}). Free space on "
                        f"that disk, check its permissions, or choose another output path") from None
