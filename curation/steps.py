"""The Step protocol and the Workdir every step runs in.

A step is declared once (`Step(...)` in its own module): its name, its frozen Settings class
(curation/settings.py), the manifest columns it needs, reads if present and adds, the files it
writes, and `run(work, settings) -> summary`. `run_step` is the one driver: it resolves and
checks the settings at the door, takes the workdir lock, calls `run`, and writes
runs/<step>.json with the settings and the fingerprint. `Workdir` owns everything on disk a
step touches: the lock, manifest reads (with required columns) and merges, output paths, the
last run's record.

A fingerprint is a hash of the result-changing settings a step recorded and of its inputs:
the manifest columns it reads and the fingerprints of the steps it comes `after`. The
pipeline compares it with the fingerprint the same step would have now, whoever ran it last.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from curation import cluster
from curation import settings as settings_
from curation.config import DatasetConfig
from curation.manifest import (atomic_write, merge_columns, read_manifest, read_run, record_run,
                               workdir_lock, write_manifest)


@dataclass(frozen=True)
class Step:
    """A declared step; see the module docstring and docs/architecture.md."""

    name: str
    settings: type                                 # a frozen dataclass of setting(...) fields
    run: Callable[["Workdir", Any], dict]          # does the work, returns the summary
    describe: Callable[[dict], str]                # the summary as text
    help: str = ""                                 # `curate <step> --help`: what, examples
    needs: tuple[str, ...] = ()                    # manifest columns that must be there
    uses: tuple[str, ...] = ()                     # manifest columns read when present
    adds: tuple[str, ...] = ()                     # manifest columns it writes
    outputs: tuple[str, ...] = ()                  # files it leaves in the workdir
    after: tuple[str, ...] = ()                    # steps whose files it reads (any re-run counts)
    constants: dict = field(default_factory=dict)  # recorded with the settings (method versions)
    on_change: dict = field(default_factory=dict)  # set by the pipeline when settings changed
    check: Callable[["Workdir", Any], None] | None = None   # before the lock: refuse early
    always: bool = False                           # the pipeline never skips it (scan)
    lock: bool = True                              # holds the workdir lock while it runs


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def frame_digest(frame: pd.DataFrame | None, columns) -> str:
    """Hash of the given manifest columns (those present), row order independent."""
    present = [] if frame is None else [c for c in columns if c in frame.columns]
    if not present:
        return "none"
    rows = frame[present].astype("string").fillna("<NA>").sort_values(present[0])
    hashed = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(present).encode()).hexdigest()[:16]


def fingerprint(step: Step, record: dict, workdir: Path, manifest: pd.DataFrame | None) -> str:
    """What a step's result depends on: its recorded settings and its inputs."""
    kept = {k: record.get(k) for k in [*settings_.result_keys(step.settings), *step.constants]}
    records = {name: read_run(workdir, name) or {} for name in step.after}
    upstream = {name: [record.get("fingerprint"), record.get("finished")]   # that very run's files
                for name, record in records.items()}
    return digest(step.name, kept, frame_digest(manifest, [*step.needs, *step.uses]), upstream)


class Workdir:
    """One step's view of <workdir>: lock, manifest, outputs, records (see the module docstring)."""

    def __init__(self, path: Path, config: DatasetConfig, step: Step, *, quiet: bool = False,
                 context: dict | None = None):
        self.path, self.config, self.step, self.quiet = Path(path), config, step, quiet
        self.context = context or {}   # what the caller hands this run (review: the live database)
        self.root = Path(config.root)
        self.started = time.time()
        self.derived: dict = {}   # values the step works out from its settings, recorded too

    def read(self, *extra: str) -> pd.DataFrame:
        """The manifest, checked to hold the step's `needs` columns (and `extra` ones)."""
        return read_manifest(self.path, required=[*self.step.needs, *extra])

    def write(self, manifest: pd.DataFrame) -> None:
        write_manifest(manifest, self.path)

    def merge(self, manifest: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        """manifest with new's columns merged on path, written; returns the merged manifest."""
        merged = merge_columns(manifest, new)
        self.write(merged)
        return merged

    def out(self, name: str) -> Path:
        """Where output `name` goes (in the workdir)."""
        return self.path / name

    def write_csv(self, name: str, table: pd.DataFrame, **options) -> Path:
        return atomic_write(self.out(name), lambda tmp: table.to_csv(tmp, index=False, **options))

    def last(self, step: str | None = None) -> dict:
        """The settings the last run of `step` (default: this one) recorded, or {}."""
        return (read_run(self.path, step or self.step.name) or {}).get("settings", {})

    def record(self, settings, summary: dict) -> dict:
        """runs/<step>.json: the settings (+ constants), the summary and the fingerprint."""
        recorded = {**settings_.record_of(settings), **self.derived, **self.step.constants}
        try:
            manifest = read_manifest(self.path)
        except FileNotFoundError:
            manifest = None
        print_ = fingerprint(self.step, recorded, self.path, manifest)
        record_run(self.path, self.step.name, settings=recorded, summary=summary,
                   started=self.started, fingerprint=print_)
        return recorded


def resolve_settings(step: Step, config: DatasetConfig, values: dict):
    """The step's settings from values (None = the default / datasets.yaml), checked once."""
    return settings_.resolve(step.name, step.settings, config, values)


def run_step(step: Step, config: DatasetConfig, workdir: Path, *, quiet: bool = False,
             **values) -> dict:
    """Resolve the settings (None = the default / datasets.yaml), then `execute`."""
    return execute(step, resolve_settings(step, config, values), config, workdir, quiet=quiet)


def execute(step: Step, settings, config: DatasetConfig, workdir: Path, *,
            quiet: bool = False, context: dict | None = None) -> dict:
    """Check, hold the lock, run the step, record it; returns its summary."""
    work = Workdir(workdir, config, step, quiet=quiet, context=context)
    if step.check is not None:
        step.check(work, settings)
    holding = workdir_lock(work.path) if step.lock else contextlib.nullcontext()
    with holding, cluster.engine_for(settings):   # per-file work on Dask when asked
        summary = step.run(work, settings)
        work.record(settings, summary)
    return summary
