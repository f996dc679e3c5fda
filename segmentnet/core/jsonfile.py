"""JSON that comes from outside (config files, --model-options, dataset.json, a run's config.json and
metrics.jsonl, ONNX metadata, the tools' own records), parsed with one set of limits.

Python's json module recurses once per level of nesting, so a file of 200,000 '[' raises
RecursionError (and a less deep one can still exhaust the stack of code that walks the value later);
an integer of hundreds of digits passes the parser but overflows wherever it meets a float. Every
such text is therefore refused here, before or while it is parsed, as a ValueError (as a syntax error
is) that says which limit it broke; the caller names the file.
"""
from __future__ import annotations

import json
import re

MAX_DEPTH = 64            # levels of nesting: the deepest our own files reach is 4
MAX_INTEGER_DIGITS = 40   # far beyond any count, size or seed; a float holds 1e308 but an int of 400 digits overflows it
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')  # (possessive: no backtracking state per character)


class JSONLimitError(ValueError):
    """A JSON text beyond the limits above."""


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """JSONLimitError when arrays and objects in `text` nest deeper than max_depth (brackets inside
    strings do not count); without recursion, so any depth is measured safely."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"arrays or objects nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise JSONLimitError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INTEGER_DIGITS})")
    return int(text)


def loads(text: str | bytes):
    """json.loads within the limits above; ValueError (a JSONDecodeError, a JSONLimitError or a
    UnicodeDecodeError) when the text is not JSON or breaks a limit. NaN and Infinity are accepted
    (a training's records hold NaN losses); checking the values is the caller's work."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    check_depth(text)
    return json.loads(text, parse_int=_integer)
