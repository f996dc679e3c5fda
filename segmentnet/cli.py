"""What every top-level script shares: turning expected errors into one clear line and an exit code."""
from __future__ import annotations

import sys

from .archive import DataError
from .config import ConfigError


class UsageError(ValueError):
    """A wrong name or value on the command line; the message lists the choices."""


# FloatingPointError: a loss that became NaN or inf (the message names the step and the fix).
EXPECTED_ERRORS = (DataError, ConfigError, UsageError, KeyError, FileNotFoundError, FloatingPointError)


def error_text(exc: BaseException) -> str:
    """The message of an expected error; one raised in a DataLoader worker arrives wrapped in the
    worker's traceback, of which its own last line is what the user needs."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    if "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1] + " (in a data loader worker)"
    return text


def run_main(main, argv=None) -> int:
    """Call main(argv); report an expected error as 'error: ...' on stderr with exit status 2."""
    try:
        return main(argv) or 0
    except EXPECTED_ERRORS as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
