"""Downloading an official archive: resumable (HTTP range requests), written to a temporary name and
renamed when complete; a server's reply is checked (status, Content-Range, Content-Length)."""
from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import DataError
from .archive import COPY_CHUNK


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
