"""What every top-level script shares: expected errors become one clear line and exit status 2;
anything else is a bug, reported with its traceback and a request to report it."""
from __future__ import annotations

import sys
import traceback

from .errors import SegmentNetError

BUG_EXIT = 70  # EX_SOFTWARE: an internal error, told apart from a user's error (2)
REPORT = ("This is a bug in SegmentNet, not a problem with your input: please report it with the "
          "traceback above and the command you ran.")


def error_text(exc: BaseException) -> str:
    """The message of an expected error; one raised in a DataLoader worker arrives wrapped in the
    worker's traceback, of which its own last line is what the user needs."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1] + " (in a data loader worker)"
    return text


def call_main(main, argv=None) -> int:
    """Call main(argv); an expected error prints 'error: ...' on stderr and returns 2, Ctrl-C 130,
    and an unexpected exception its traceback, the request to report it, and 70."""
    try:
        return main(argv) or 0
    except SegmentNetError as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        return BUG_EXIT
