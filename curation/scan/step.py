"""`curate scan`: list a dataset's files, check each image, and write the manifest's first columns.

Files are judged by content, not extension. Unchanged files (same path, size, mtime) reuse
their cached rows, so a re-scan only opens new or changed files.
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curation.config import ConfigError, DatasetConfig, check_classes, check_root
from curation.errors import ManifestUnreadable
from curation.images import DEFAULT_MAX_PIXELS, ImageError, probe
from curation.manifest import (SCAN_COLUMNS, ManifestMissing, manifest_path, merge_columns,
                               read_manifest, unchanged_rows)
from curation.parallel import map_files
from curation.cluster import cluster_setting
from curation.settings import setting
from curation.steps import Step, Workdir, run_step
from curation.vocabulary import GIVEN_SPLIT_NAMES

_CHECKED_COLUMNS = ["readable", "error", "format", "mode", "width", "height", "sha256"]


@dataclass(frozen=True)
class ListedFile:
    path: str            # POSIX, relative to the root
    label: str | None
    given_split: str | None
    bytes: int
    mtime: float


@dataclass
class Listing:
    files: list[ListedFile]
    layout: str
    empty_class_folders: list[str]
    skipped: list[tuple[str, str]]   # (relative path, reason): links out of root, loops, bad names


def detect_layout(root: Path) -> str:
    """`split_class_folders` when the top folders are split names (train/test/...), else classes."""
    tops = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if tops and all(name.lower() in GIVEN_SPLIT_NAMES for name in tops):
        return "split_class_folders"
    return "class_folders"


def list_files(root: Path, layout: str = "auto") -> Listing:
    """Walk root without leaving it: dotfiles skipped, symlinks followed only inside root, once."""
    root = root.resolve()
    layout = detect_layout(root) if layout == "auto" else layout
    depth_of_class = 1 if layout == "split_class_folders" else 0
    files, skipped, class_dirs, seen_dirs = [], [], {}, {root}
    stack = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(("/".join(parts) or ".", f"cannot list folder: {exc.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel_parts = (*parts, entry.name)
            rel = "/".join(rel_parts)
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append((rel.encode("utf-8", "backslashreplace").decode(),
                                "file name is not valid UTF-8"))
                continue
            target = Path(entry.path)
            if entry.is_symlink():
                resolved = target.resolve()
                if not resolved.exists():
                    skipped.append((rel, "broken symlink"))
                    continue
                if root not in resolved.parents and resolved != root:
                    skipped.append((rel, "symlink points outside the dataset root"))
                    continue
            info = os.stat(target)
            if stat.S_ISDIR(info.st_mode):
                real = target.resolve()
                if real in seen_dirs:
                    skipped.append((rel, "symlink loop or folder already listed"))
                    continue
                seen_dirs.add(real)
                if len(rel_parts) == depth_of_class + 1:
                    class_dirs[rel] = 0
                stack.append((target, rel_parts))
            elif stat.S_ISREG(info.st_mode):
                given = GIVEN_SPLIT_NAMES.get(rel_parts[0].lower()) if depth_of_class else None
                label = rel_parts[depth_of_class] if len(rel_parts) > depth_of_class + 1 else None
                class_key = "/".join(rel_parts[:depth_of_class + 1])
                if class_key in class_dirs:
                    class_dirs[class_key] += 1
                files.append(ListedFile(rel, label, given, info.st_size, info.st_mtime))
    empty = sorted(k for k, n in class_dirs.items() if n == 0)
    return Listing(sorted(files, key=lambda f: f.path), layout, empty, skipped)


def check_file(args: tuple[str, int]) -> dict:
    """Hash one file and check that it decodes; never raises for a bad file."""
    path, max_pixels = args
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        info = probe(Path(path), max_pixels=max_pixels)
        return {"readable": True, "error": None, "format": info.format, "mode": info.mode,
                "width": info.width, "height": info.height, "sha256": digest.hexdigest()}
    except ImageError as exc:
        error = exc.reason if not exc.detail else f"{exc.reason}: {exc.detail}"
    except OSError as exc:
        error = f"unreadable: {exc.strerror or exc}"
    return {"readable": False, "error": error[:300], "format": None, "mode": None,
            "width": None, "height": None, "sha256": digest.hexdigest()}


def error_reason(error: str | None) -> str | None:
    """The short reason of an `error` cell ('truncated: ...' -> 'truncated')."""
    return None if error is None else error.split(":", 1)[0]


@dataclass(frozen=True)
class Settings:
    """What `curate scan` can be told."""

    workers: int | None = setting(None, "Processes (default: cores).", kind=int, low=1, high=256,
                                  result=False)
    cluster: str | None = cluster_setting()
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Refuse images larger than this "
                              "(decompression-bomb guard).", low=1)


def check_places(work: Workdir, settings: Settings) -> None:
    """The root must exist and the workdir must lie outside it (curate never writes there)."""
    check_root(work.config)
    workdir, root = work.path.resolve(), work.root.resolve()
    if workdir == root or root in workdir.parents:
        raise ConfigError(f"workdir {workdir} is inside the dataset root {root}; "
                          f"curate never writes there: choose another --workdir")


def _previous_manifest(work: Workdir) -> pd.DataFrame | None:
    try:
        return read_manifest(work.path)
    except ManifestMissing:
        return None
    except ManifestUnreadable:   # scan is the recovery: rebuild from the files
        print(f"note: {manifest_path(work.path)} is unreadable; rebuilding it from the files",
              file=sys.stderr)
        return None


def run(work: Workdir, settings: Settings) -> dict:
    """Scan the dataset root into <workdir>/manifest.parquet and return the summary."""
    root = work.root.resolve()
    listing = list_files(root, work.config.layout)
    current = pd.DataFrame([f.__dict__ for f in listing.files],
                           columns=["path", "label", "given_split", "bytes", "mtime"])
    check_classes(work.config, set(current["label"].dropna()))
    old = _previous_manifest(work)
    cached = unchanged_rows(old, current, _CHECKED_COLUMNS)
    todo = current[~current["path"].isin(cached["path"])]
    checked = map_files(check_file, [(str(root / p), settings.max_pixels) for p in todo["path"]],
                        workers=settings.workers, desc="scan", quiet=work.quiet)
    fresh = pd.concat([todo.reset_index(drop=True), pd.DataFrame(checked, columns=_CHECKED_COLUMNS)],
                      axis=1)
    reused = current.merge(cached.drop(columns=["bytes", "mtime"]), on="path")
    manifest = pd.concat([reused, fresh], ignore_index=True) if len(reused) else fresh
    manifest = _typed(manifest)[SCAN_COLUMNS]
    if old is not None:
        later = [c for c in old.columns if c not in SCAN_COLUMNS]
        manifest = merge_columns(manifest, cached[["path"]].merge(old[["path", *later]], on="path"))
    work.write(manifest)
    work.derived.update(root=str(root), layout=listing.layout)
    return summarize(manifest, listing, reused=len(reused), seconds=time.time() - work.started)


def scan(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate scan` as a function: see Settings for the keyword arguments."""
    return run_step(STEP, config, workdir, quiet=quiet, **settings)


def _typed(manifest: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes so Parquet schemas match across runs."""
    return manifest.astype({"path": "string", "label": "string", "given_split": "string",
                            "readable": "bool", "error": "string", "format": "string",
                            "mode": "string", "width": "Int64", "height": "Int64",
                            "bytes": "int64", "mtime": "float64", "sha256": "string"})


def summarize(manifest: pd.DataFrame, listing: Listing, *, reused: int, seconds: float) -> dict:
    """Counts a user checks after a scan: per class, per given split, and what was unreadable."""
    readable = manifest[manifest["readable"]]
    bad = manifest[~manifest["readable"]]
    by_reason: dict[str, list[str]] = {}
    for path, error in zip(bad["path"], bad["error"]):
        by_reason.setdefault(error_reason(error), []).append(path)
    for path, reason in listing.skipped:
        by_reason.setdefault(reason, []).append(path)
    return {
        "files": int(len(manifest)), "readable": int(len(readable)),
        "unreadable": int(len(bad)), "skipped": len(listing.skipped),
        "layout": listing.layout,
        "classes": dict(sorted(Counter(readable["label"].dropna()).items())),
        "unlabelled": int(readable["label"].isna().sum()),
        "given_splits": dict(sorted(Counter(readable["given_split"].dropna()).items())),
        "unreadable_by_reason": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "empty_class_folders": listing.empty_class_folders,
        "reused": reused, "checked": int(len(manifest) - reused),
        "seconds": round(seconds, 2),
        "files_per_second": round((len(manifest) - reused) / seconds, 1) if seconds > 0 else None,
    }


def describe(summary: dict) -> str:
    """A short human summary of a scan."""
    lines = [f"Scanned {summary['files']} files ({summary['layout']}): {summary['readable']} readable, "
             f"{summary['unreadable']} unreadable, {summary['skipped']} skipped; "
             f"reused {summary['reused']} cached rows, checked {summary['checked']} "
             f"in {summary['seconds']} s."]
    classes = summary["classes"]
    if classes:
        lines.append(f"{len(classes)} classes: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    if summary["given_splits"]:
        lines.append("given splits: " + ", ".join(f"{k} {v}" for k, v in summary["given_splits"].items()))
    if summary["unlabelled"]:
        lines.append(f"{summary['unlabelled']} readable files sit outside any class folder (no label)")
    for reason, paths in summary["unreadable_by_reason"].items():
        shown = ", ".join(paths[:5]) + (f", ... ({len(paths) - 5} more)" if len(paths) > 5 else "")
        lines.append(f"  {reason}: {len(paths)} — {shown}")
    if summary["empty_class_folders"]:
        lines.append("empty class folders: " + ", ".join(summary["empty_class_folders"]))
    return "\n".join(lines)


HELP = """List every file under the dataset root, check it decodes, and write the manifest.

\b
Example: curate scan stanford-cars-25 --workers 4
         curate scan ~/photos/cars --json
         curate scan ~/photos/cars --cluster local   (or tcp://HOST:8786: Dask, docs/scale.md)
Unchanged files (same path, size, mtime) reuse their cached rows.
"""


STEP = Step("scan", Settings, run, describe, help=HELP, adds=tuple(SCAN_COLUMNS),
            check=check_places,
            uses=("path", "bytes", "mtime", "sha256", "readable", "label", "given_split"),
            always=True)
