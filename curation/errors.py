"""The one family of user-facing errors: the CLI prints any CurateError as one line, no traceback."""
from __future__ import annotations


class CurateError(Exception):
    """A problem the user can fix; the message names the file or setting and what to do."""

    exit_code = 1
