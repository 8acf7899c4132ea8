"""The per-dataset manifest: one Parquet row per file that every step reads and extends.

Also the workdir rules every step obeys: files are written atomically (temp + rename), one
run at a time holds the workdir lock, and each step records what it did in runs/<step>.json.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd

from curation import lifecycle, safety
from curation.errors import CurateError

MANIFEST_NAME = "manifest.parquet"
LOCK_NAME = ".lock"

# The public column contract, step by step (documented in docs/manifest.md).
SCAN_COLUMNS = ["path", "label", "given_split", "readable", "error", "format", "mode",
                "width", "height", "bytes", "mtime", "sha256"]
DEDUPE_COLUMNS = ["dup_group", "dup_keeper", "dup_of", "dup_distance"]
NOISE_COLUMNS = ["noise_score", "noise_flag", "noise_reason", "suggested_label"]
REVIEW_COLUMNS = ["review_decision", "review_label"]
SPLIT_COLUMNS = ["split"]
IDENTITY_COLUMNS = ["path", "bytes", "mtime"]


class WorkdirBusy(CurateError, RuntimeError):
    """Another curate run holds this workdir."""


class ManifestMissing(CurateError, FileNotFoundError):
    """The step needs a manifest that an earlier step has not written yet."""


def manifest_path(workdir: Path) -> Path:
    return Path(workdir) / MANIFEST_NAME


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temp file beside path, then rename it over path in one step.

    The temp file ends in path's own suffix, so writers that insist on one (Keras's `.keras`,
    NumPy's `.npy`) write exactly the file they are given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        lifecycle.raise_if_signalled()   # never publish a file after Ctrl-C or SIGTERM
        os.replace(tmp, path)
    except OSError as exc:
        safety.raise_if_disk_full(exc, path, Path(tmp))
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, pd.Timestamp)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[Path]:
    """Hold the workdir for one run; a second concurrent run gets WorkdirBusy, not a corrupt file."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        handle = lifecycle.acquire_lock(workdir / LOCK_NAME)
    except lifecycle.LockHeld as held:
        raise WorkdirBusy(f"{workdir} is in use by {held}; wait for it to finish "
                          f"or use another --workdir") from None
    try:
        yield workdir
    finally:
        lifecycle.release_lock(handle)


def read_manifest(workdir: Path, *, required: Iterable[str] = ()) -> pd.DataFrame:
    """Load the manifest, checking that the columns this step needs are present."""
    path = manifest_path(workdir)
    if not path.exists():
        raise ManifestMissing(f"{path} not found: run `curate scan` on this dataset first")
    manifest = safety.read_parquet_checked(path)
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise ManifestMissing(f"{path} lacks columns {missing}: run the step that adds them first")
    return manifest


def write_manifest(manifest: pd.DataFrame, workdir: Path) -> Path:
    """Write the manifest atomically, rows sorted by path so diffs and reruns are stable."""
    ordered = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    safety.keep_previous(manifest_path(workdir))
    return atomic_write(manifest_path(workdir), lambda tmp: ordered.to_parquet(tmp, index=False))


def merge_columns(manifest: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Replace (or add) the columns of `new`, matched on `path`; rows absent from new get nulls."""
    columns = [c for c in new.columns if c != "path"]
    kept = manifest.drop(columns=[c for c in columns if c in manifest.columns])
    merged = kept.merge(new[["path", *columns]], on="path", how="left", validate="one_to_one")
    return merged[[*kept.columns, *columns]]


def file_identity(paths: Iterable[str], root: Path | None = None) -> pd.DataFrame:
    """(path, bytes, mtime) of each file as it is on disk now; -1 / -1.0 when it cannot be read.

    The cache key every step compares with the identity stored in a manifest or cache.
    """
    rows = []
    for name in paths:
        try:
            info = os.stat(Path(root) / name if root else name)
            rows.append((name, info.st_size, info.st_mtime))
        except OSError:
            rows.append((name, -1, -1.0))
    return pd.DataFrame(rows, columns=IDENTITY_COLUMNS)


def unchanged_rows(old: pd.DataFrame | None, current: pd.DataFrame, columns: Iterable[str], *,
                   made_with: str | None = None, wanted: str | None = None) -> pd.DataFrame:
    """Rows of `old` whose file identity (path, bytes, mtime) still matches and that hold `columns`;
    none when `old` was made with another method or settings digest (`made_with` != `wanted`).

    The one per-file cache rule (scan's rows, dedupe's hashes, the training pixel cache): a
    re-run only computes values for files not returned here.
    """
    columns = list(columns)
    if old is None or made_with != wanted or not set(columns) <= set(old.columns):
        return pd.DataFrame(columns=[*IDENTITY_COLUMNS, *columns])
    keep = old[[*IDENTITY_COLUMNS, *[c for c in columns if c not in IDENTITY_COLUMNS]]]
    return keep.merge(current[IDENTITY_COLUMNS], on=IDENTITY_COLUMNS, how="inner")


def record_run(workdir: Path, step: str, *, settings: dict, summary: dict,
               started: float, fingerprint: str | None = None) -> Path:
    """Write runs/<step>.json: what a step was asked, what it found, versions, time taken and
    the fingerprint the pipeline compares (curation/steps.py)."""
    from importlib import metadata

    versions = {}
    for package in ("curate", "pandas", "numpy", "pillow", "imagehash", "keras", "cleanlab"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    record = {"step": step, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": round(time.time() - started, 3), "settings": settings,
              "summary": summary, "versions": versions, "fingerprint": fingerprint}
    return atomic_write_json(Path(workdir) / "runs" / f"{step}.json", record)


def read_run(workdir: Path, step: str) -> dict | None:
    path = Path(workdir) / "runs" / f"{step}.json"
    return json.loads(path.read_text()) if path.exists() else None
