"""The hypercolumns file that Hypercolumns.py's extract stage writes and its pretrain stage reads.

MAGIC, the header's length (8 bytes, little-endian), the header (JSON: CNN, layers, dataset, sampling
settings, row ranges per split), spaces up to a multiple of 64 bytes, then vectors (count x dim
float16, row-major) and labels (count uint8); read through memory maps.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.files import MAX_JSON_BYTES, open_regular
from ..core.jsonfile import loads as json_loads

MAGIC = b"SEGMENTNET HYPERCOLUMNS 1\n"


def read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the data) of a hypercolumns file."""
    try:
        with open_regular(path, "the hypercolumns file") as f:
            magic = f.read(len(MAGIC))
            length_bytes = f.read(8)
            if magic != MAGIC or len(length_bytes) != 8:
                raise DataError(f"{path} is not a hypercolumns file (written by 'Hypercolumns.py extract')")
            (length,) = struct.unpack("<Q", length_bytes)
            if length > MAX_JSON_BYTES:
                raise ValueError(f"a header of {length} bytes")
            header = json_loads(f.read(length))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read its header ({exc}); run extract again with --force") from None
    offset = data_offset(length)
    expected = offset + header["count"] * (header["dim"] * 2 + 1)
    if path.stat().st_size != expected:
        raise DataError(f"{path} is {path.stat().st_size} bytes, its header says {expected}: the file is truncated "
                        f"or damaged; run extract again with --force")
    return header, offset


def data_offset(header_length: int) -> int:
    return math.ceil((len(MAGIC) + 8 + header_length) / 64) * 64


def header_bytes(header: dict) -> bytes:
    text = json.dumps(header).encode()
    start = len(MAGIC) + 8 + len(text)
    return MAGIC + struct.pack("<Q", len(text)) + text + b" " * (data_offset(len(text)) - start)


def open_hypercolumns(path: Path, mode: str = "r"):
    """(header, vectors memmap [count, dim] float16, labels memmap [count] uint8)."""
    header, offset = read_header(path)
    count, dim = header["count"], header["dim"]
    vectors = np.memmap(path, np.float16, mode, offset, (count, dim))
    labels = np.memmap(path, np.uint8, mode, offset + count * dim * 2, (count,))
    return header, vectors, labels
