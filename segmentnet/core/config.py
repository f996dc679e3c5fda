"""Hyperparameters as one typed dataclass, settable from the command line or a JSON file.

A script declares its hyperparameters as a dataclass whose fields carry a trailing comment;
`parse_config` turns every field into `--name value` (dashes or underscores alike), reads
`--config FILE` (JSON) first, and uses the comments as `--help` text. No exec, no globals.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import math
import reprlib
import tokenize
import typing
from pathlib import Path

from .errors import ConfigError, DataError
from .files import read_regular
from .jsonfile import loads as json_loads

MAX_CONFIG_BYTES = 1 << 20  # a config file of hyperparameters is a few hundred bytes


# ----------------------------------------------------------------------------- values read from files
# Config files, checkpoints and dataset.json are hostile input: each entry a program uses is checked
# for its type and range where the file is read, and every problem is named at once.


def is_number(value) -> bool:
    """A finite number that a float holds (true and false, NaN, Infinity and integers beyond 1e308 are none)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


FLOAT32_MAX = 3.4e38      # a value that reaches a float32 tensor must lie well within float32's range
FLOAT32_TINY = 1.2e-38    # ... and not vanish to 0 there (a divisor, such as a standard deviation)
INT64_MAX = 2 ** 63 - 1   # an int that reaches torch or numpy must fit in int64


def is_float32(value, positive: bool = False) -> bool:
    """A finite number that float32 holds as it is: |value| <= FLOAT32_MAX and, when positive, > 0 and
    not below float32's smallest normal number (it would become 0 or lose its digits)."""
    return is_number(value) and abs(value) <= FLOAT32_MAX and (not positive or value >= FLOAT32_TINY)


def is_whole(value, low: int = 0, high: float = math.inf) -> bool:
    return type(value) is int and low <= value <= high


def is_colours(value, count: int = 0) -> bool:
    """A palette: a list of at least `count` [r, g, b] colours, each 0 to 255."""
    return isinstance(value, list) and len(value) >= count and all(
        isinstance(c, list) and len(c) == 3 and all(is_whole(x, 0, 255) for x in c) for c in value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 4, 60, 60


def shown(value) -> str:
    """A value as an error message quotes it: short (a tensor by its type and shape)."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"a tensor of {value.dtype}, shape {tuple(value.shape)}"
    text = _SHORT.repr(value)  # (bounded: a hostile value may be nested thousands deep, or huge)
    return text if len(text) <= 60 else text[:57] + "..."


def entry_problems(values: dict, rules: dict, optional=()) -> list[str]:
    """rules: key -> (test, what it must be). For each entry of `values` that fails its test:
    '<key> must be <what>, got <value>'; for each missing one not in `optional`: '<key> is missing'."""
    problems = []
    for key, (test, what) in rules.items():
        if key not in values:
            if key not in optional:
                problems.append(f"{key} is missing")
        elif not test(values[key]):
            problems.append(f"{key} must be {what}, got {shown(values[key])}")
    return problems


# ----------------------------------------------------------------------------- hyperparameters


def field_comments(cls) -> dict[str, str]:
    """Map each field of a dataclass to the comment written after it in the source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    last_name_on_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[0] not in last_name_on_line and tok.start[1] > 0:
            last_name_on_line[tok.start[0]] = tok.string
        if tok.type == tokenize.COMMENT and tok.start[0] in last_name_on_line:
            comments[last_name_on_line[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return comments


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_json_dict(text: str) -> dict:
    try:
        value = json_loads(text)
    except ValueError as exc:  # not JSON, or beyond jsonfile's limits (nesting, digits)
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 16}}': {exc}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _converter(annotation):
    if annotation in (bool, "bool"):
        return _parse_bool
    if annotation in (int, "int"):
        return int
    if annotation in (float, "float"):
        return float
    if annotation in (dict, "dict") or str(annotation).startswith("dict"):
        return _parse_json_dict
    return str


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="JSON file of hyperparameters; flags override it")
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        names = {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
        parser.add_argument(
            *sorted(names),
            dest=f.name,
            type=_converter(hints.get(f.name, f.type)),
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=f"{comments.get(f.name, '')} (default: {json.dumps(default)})",
        )
    return parser


def config_from_dict(cls, values: dict, source: str = "config"):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        expected = hints.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise ConfigError(f"{source}: {key} is an integer of {len(str(abs(value)))} digits, beyond what any "
                              f"setting can be (at most {INT64_MAX})")
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected in (int, float, bool, str) and (not isinstance(value, expected) or
                                                    expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: {key} must be {expected.__name__}, got {value!r}")
        clean[key] = value
    return cls(**clean)


def parse_config(cls, argv=None, description: str = "", settings: dict | None = None):
    """Defaults <- JSON file (--config) <- `settings` (a caller's own values) <- command-line flags."""
    return config_from_dict(cls, *read_settings(cls, argv, description, settings))


def read_settings(cls, argv=None, description: str = "", settings: dict | None = None) -> tuple[dict, str]:
    """(the values set in the JSON file, by `settings` and by flags, where they came from): what
    parse_config makes a config of, and what a self-configuring training must leave as it is."""
    args = build_parser(cls, description).parse_args(argv)
    values = {}
    if args.config:
        path = Path(args.config)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder; give the JSON file of hyperparameters")
        try:
            values = json_loads(read_regular(path, "--config", MAX_CONFIG_BYTES))
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"--config {path} cannot be read ({exc.strerror or exc}); check that it is a file "
                              f"you may read") from None
        except DataError as exc:  # a fifo, a device or a file too large
            raise ConfigError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--config {path} is not text (UTF-8): {exc}; give the JSON file of "
                              f"hyperparameters") from None
        except ValueError as exc:  # not JSON, or beyond jsonfile's limits
            raise ConfigError(f"--config {path}: not valid JSON ({exc})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: expected a JSON object of hyperparameters")
        values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update(settings or {})
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    return values, str(args.config or "command line")
