"""`curate check-leaks`: a read-only check that no duplicate group crosses the splits.

Declared on the Step protocol (its run is recorded in runs/check-leaks.json); it takes no lock,
as it writes nothing but its record. The leak rule itself is curation/leaks.py, shared with
split, dedupe and the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curation.config import DatasetConfig
from curation.leaks import describe_leaks, leak_report
from curation.manifest import ManifestMissing
from curation.settings import setting
from curation.steps import Step, Workdir, run_step
from curation.vocabulary import GROUP_COLUMN, manifest_groups

SPLIT_COLUMNS = ("split", "given_split")   # checked in this order when --column is not given


@dataclass(frozen=True)
class Settings:
    """What `curate check-leaks` can be told."""

    column: str | None = setting(None, "Split column to check (default: split if present, else "
                                 "given_split).", kind=str)


def run(work: Workdir, settings: Settings) -> dict:
    """The leak report of the chosen split column; groups from dedupe, else identical bytes."""
    manifest = work.read()
    column = settings.column or next((c for c in SPLIT_COLUMNS if c in manifest.columns
                                      and manifest[c].notna().any()), SPLIT_COLUMNS[0])
    if column not in manifest.columns or manifest[column].isna().all():
        raise ManifestMissing(f"the manifest in {work.path} has no '{column}' values: run `curate "
                              f"split` first, or name a split column with --column")
    groups, from_dedupe = manifest_groups(manifest)
    report = leak_report(manifest, column, groups=groups)
    report["groups_from"] = ("dedupe" if from_dedupe
                             else "sha256 (run `curate dedupe` to check near-duplicates too)")
    return report


def describe(report: dict) -> str:
    """Every leaking group, and where the groups came from."""
    return f"Duplicate groups from {report['groups_from']}.\n" + describe_leaks(report, show=None)


HELP = """Exit 1 and list the duplicate groups whose images sit in more than one split.

\b
Example: curate check-leaks swift-wagonr --column given_split
         curate check-leaks stanford-cars-25 --json
Groups come from `curate dedupe` (else byte-identical files); excluded images never leak.
"""

STEP = Step("check-leaks", Settings, run, describe, help=HELP, needs=("path",),
            uses=(*SPLIT_COLUMNS, GROUP_COLUMN, "sha256"), lock=False)


def check_leaks(config: DatasetConfig, workdir: Path, column: str | None = None, *,
                quiet: bool = True) -> dict:
    """`curate check-leaks` as a function: the leak report (see run)."""
    return run_step(STEP, config, workdir, quiet=quiet, column=column)
