"""What every top-level script shares: turning expected errors into one clear line and an exit code."""
from __future__ import annotations

import sys

from .archive import DataError
from .config import ConfigError


class UsageError(ValueError):
    """A wrong name or value on the command line; the message lists the choices."""


EXPECTED_ERRORS = (DataError, ConfigError, UsageError, KeyError, FileNotFoundError)


def run_main(main, argv=None) -> int:
    """Call main(argv); report an expected error as 'error: ...' on stderr with exit status 2."""
    try:
        return main(argv) or 0
    except EXPECTED_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
