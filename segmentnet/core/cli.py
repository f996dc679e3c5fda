"""What every top-level script shares: expected errors become one clear line and exit status 2;
anything else is a bug, reported with its traceback and a request to report it."""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager

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


@contextmanager
def stop_cleanly_on_signals(then: str, names=("SIGTERM", "SIGHUP")):
    """Turn these signals into SystemExit(128 + signal) inside the block, so that its clean-up runs on
    the way out as it does for Ctrl-C (atomic_path removes its temporary file, a separation its
    partial folder); prints 'stopped by signal N: <then>'. The previous handlers come back afterwards.
    Worker processes (forked with the handler) die of the signal as usual."""
    owner = os.getpid()
    signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        signals = []

    def stop(signum, frame):
        if os.getpid() != owner:  # a pool worker, e.g. stopped by pool.terminate()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # loader workers die of the same signal (a process group's kill): torch's SIGCHLD handler would
        # report that as an error while this exit unwinds
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        message = f"stopped by signal {signum}: {then}\n"
        try:  # straight to the file: a print here could meet a progress bar's print mid-way (reentrant call)
            os.write(sys.stderr.fileno(), message.encode())
        except (AttributeError, OSError, ValueError):  # stderr redirected to no file (a test's buffer)
            sys.stderr.write(message)
        raise SystemExit(128 + signum)

    # a signal ignored when the tool started (nohup's SIGHUP) stays ignored
    signals = [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
