"""The one family of user-facing errors: the CLI prints any CurateError as one line, no traceback,
and exits with its exit_code (2 for input that cannot be read, as for a usage error)."""
from __future__ import annotations


class CurateError(Exception):
    """A problem the user can fix; the message names the file or setting and what to do."""

    exit_code = 1


class ManifestUnreadable(CurateError):
    """The manifest exists but is not valid Parquet (truncated, overwritten, disk error)."""

    exit_code = 2


class NotEnoughData(CurateError):
    """The data cannot support the step: one class in train, an empty val or test split."""


class ModelMissing(CurateError, FileNotFoundError):
    """No trained model where one is needed."""


class DiskFull(CurateError):
    """A write failed with ENOSPC or EDQUOT; what was there before is unchanged."""


class Interrupted(CurateError):
    """Ctrl-C or SIGTERM; exit_code is 128 + the signal number, as a shell reports it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
