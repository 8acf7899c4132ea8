"""Turning the ways a run can fail outside the code's control into one clear line.

A full disk, a garbled manifest, Ctrl-C or SIGTERM each become a CurateError that names the
file and what to do; CurateGroup (the CLI's click group) prints any CurateError as one line
and exits with its exit_code. The manifest writer keeps the previous good version as
manifest.parquet.bak so a garbled one can be restored.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path

import click
import pandas as pd

from curation import lifecycle
from curation.errors import CurateError, DiskFull, Interrupted, ManifestUnreadable

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_PARQUET_MAGIC = b"PAR1"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def disk_full(where: Path, need_bytes: int) -> DiskFull:
    """'no space left on <where>: need ~N MB (M MB free)', N rounded up to whole MB, at least 1."""
    where = Path(where)
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(where).free / 1e6:.0f} MB free"
    need = max(1, math.ceil(need_bytes / 1e6))
    return DiskFull(f"no space left on {where}: need ~{need} MB{free}; free some space or use "
                    f"another --workdir and re-run (files written before are unchanged)")


def raise_if_disk_full(exc: OSError, path: Path, tmp: Path) -> None:
    """Inside atomic_write: turn ENOSPC/EDQUOT while writing path into DiskFull.

    The space needed is estimated as the larger of what was written before the failure and the
    size of the version being replaced.
    """
    if not is_disk_full(exc):
        return
    sizes = [0]
    for candidate in (tmp, path):
        with contextlib.suppress(OSError):
            sizes.append(os.stat(candidate).st_size)
    raise disk_full(Path(path).parent, max(sizes)) from None


def backup_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".bak")


def looks_like_parquet(path: Path) -> bool:
    """Both ends carry Parquet's magic bytes: a truncated or overwritten file fails this."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            return head == _PARQUET_MAGIC and handle.read(4) == _PARQUET_MAGIC
    except OSError:
        return False


def keep_previous(path: Path) -> None:
    """Before path is replaced, keep the current version as path.bak if it is good Parquet.

    A hard link costs no space or time (the replaced name keeps the old data); a garbled
    current file never overwrites a good backup.
    """
    path = Path(path)
    if not looks_like_parquet(path):
        return
    backup = backup_path(path)
    staging = backup.with_name(f".{backup.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    try:
        os.link(path, staging)
    except OSError:
        shutil.copy2(path, staging)
    os.replace(staging, backup)


def read_parquet_checked(path: Path) -> pd.DataFrame:
    """pd.read_parquet, but a file that is not valid Parquet raises ManifestUnreadable saying how
    to recover: restore the .bak the writer kept, or re-run scan."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:   # pyarrow's ArrowInvalid is a ValueError
        if is_disk_full(exc) or isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        backup = backup_path(path)
        if looks_like_parquet(backup):
            fix = f"restore the previous version with `cp {backup} {path}`, or re-run `curate scan`"
        else:
            fix = ("re-run `curate scan` to rebuild it, then the later steps "
                   "(`curate run --from dedupe`)")
        raise ManifestUnreadable(f"{path} is unreadable ({reason}): {fix}") from None


def one_line(exc: CurateError) -> click.ClickException:
    """A ClickException printing exc's message as one 'Error: ...' line, exiting with its code."""
    error = click.ClickException(str(exc))
    error.exit_code = exc.exit_code
    return error


class CurateGroup(click.Group):
    """The CLI's group: any CurateError, a full disk, Ctrl-C (130) or SIGTERM (143) in any
    command ends as one line and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with lifecycle.signals_as_interrupts():
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            name = "SIGTERM" if isinstance(exc, lifecycle.Terminated) else "Ctrl-C"
            raise one_line(Interrupted(
                f"curate {ctx.invoked_subcommand} stopped by {name}; nothing was half-written "
                f"(finished files and caches are kept): run it again to resume",
                lifecycle.interrupt_exit_code(exc))) from None
        except CurateError as exc:
            raise one_line(exc) from None
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            where = Path(exc.filename).parent if exc.filename else Path.cwd()
            raise one_line(disk_full(where, 0)) from None
