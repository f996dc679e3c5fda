"""The errors a user can cause, and only those: each message names the file or value, what is
wrong and what to do. The scripts print such an error as one line and exit with status 2; any
other exception is a bug in SegmentNet and keeps its traceback (see cli.call_main)."""
from __future__ import annotations


class SegmentNetError(Exception):
    """Base of every expected error."""


class DataError(SegmentNetError, RuntimeError):
    """Bad input data (archives, split lists, images, masks, checkpoints, dataset files)."""


class ConfigError(SegmentNetError, ValueError):
    """A hyperparameter value that cannot work; the message says which and why."""


class UsageError(SegmentNetError, ValueError):
    """A wrong name or value on the command line; the message lists the choices."""


class UnknownNameError(UsageError, KeyError):
    """A name missing from a registry (dataset, model, loss, ...); the message lists the choices.
    Also a KeyError, as a registry lookup is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NonFiniteLossError(SegmentNetError, FloatingPointError):
    """The loss became NaN or inf; the message names the step and the fix."""
