"""`curate dedupe`: exact and near-duplicate groups, one keeper each, and train/test leakage.

The grouping itself is curation/grouping.py (pure); this module adds the disk I/O: the hash
cache in the manifest, the manifest columns, dupes.csv, the dupes.png contact sheet, the summary.
"""
from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from curation.config import ConfigError, DatasetConfig
from curation.dedupe.grouping import (DEFAULT_KINDS, LINKED, PIXEL_CHECK_RADIUS, group_duplicates,
                       thresholds_for)
from curation.dedupe.hashing import HASH_METHOD, hash_columns, hash_files, parse_kinds, pixel_digests, to_uint64
from curation.leaks import describe_leaks, leak_report
from curation.manifest import (atomic_write, file_identity, merge_columns, read_manifest, read_run,
                       record_run, unchanged_rows, workdir_lock, write_manifest)
from curation.sheets import contact_sheet

OUTPUT_TYPES = {"dup_group": "Int64", "dup_keeper": "boolean", "dup_of": "string",
                "dup_distance": "Int64", "dup_reason": "string", "dup_keeper_reason": "string"}
SHEET_COLUMNS = 8   # pictures drawn per group in dupes.png
_SCAN_NEEDS = ["path", "readable", "width", "height", "bytes", "mtime", "sha256"]


def label_conflicts(members: pd.DataFrame) -> dict:
    """Groups whose members carry different labels: a copy filed under two classes, or a chain
    of near matches that joined different pictures (then some member is linked to the keeper
    only through other copies)."""
    labelled = members.dropna(subset=["label"])
    labels = labelled.groupby("dup_group")["label"].nunique()
    conflicted = labels[labels > 1].index
    reasons = members.get("dup_reason", pd.Series(pd.NA, index=members.index)).astype("string")
    chained = members.loc[reasons.str.contains(LINKED, regex=False).fillna(False).to_numpy(),
                          "dup_group"]
    return {"groups": int(len(conflicted)),
            "chained": int(len(set(conflicted) & set(chained))),
            "example_groups": [int(g) for g in conflicted[:10]]}


def dupes_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per image in a group, keeper first: what dupes.csv holds."""
    table = manifest[manifest["dup_group"].notna()]
    columns = ["dup_group", "path", "dup_keeper", "dup_distance", "dup_reason", "dup_of",
               "dup_keeper_reason", "label", "given_split", "width", "height", "bytes"]
    table = table[[c for c in columns if c in table.columns]]
    table = table.sort_values(["dup_group", "dup_keeper", "dup_distance", "path"],
                              ascending=[True, False, True, True])
    return table.rename(columns={"dup_group": "group", "dup_keeper": "keeper",
                                 "dup_distance": "distance", "dup_reason": "reason"})


SHEET_LEGEND = (
    "Each row is one duplicate group; the first picture is the one kept (KEEP WxH). Other "
    "captions say how a copy matches it:",
    "same bytes / same pixels = an exact copy; near, cropped, mirrored d=N = N bits of "
    "perceptual hash apart in that alignment;",
    "* = matches the keeper only through other copies (a chain): it may show a different "
    "picture. MIXED LABELS = members are filed under different classes.",
)


def sheet_rows(table: pd.DataFrame, root: Path, groups: int) -> list:
    """Contact-sheet rows for the first `groups` groups (1 = largest): keeper first, captions
    with reason and split; a title says MIXED LABELS when members are in different classes."""
    rows = []
    for group, members in islice(table.groupby("group", sort=True), groups):
        splits = sorted(set(members.get("given_split", pd.Series(dtype=object)).dropna()))
        labels = sorted(set(members.get("label", pd.Series(dtype=object)).dropna()))
        title = f"group {group}: {len(members)} images"
        title += f" | splits {', '.join(splits)}" if len(splits) > 1 else ""
        title += f" | MIXED LABELS: {', '.join(labels)}" if len(labels) > 1 else ""
        items = []
        for row in members.itertuples(index=False):
            first = f"KEEP {row.width}x{row.height}" if row.keeper else _caption(row.reason,
                                                                                    row.distance)
            where = "/".join(str(v) for v in (getattr(row, "given_split", None),
                                              getattr(row, "label", None)) if pd.notna(v))
            items.append((root / row.path, f"{first}\n{where}"))
        rows.append((title, items))
    return rows


def sheet_footer(table: pd.DataFrame, shown: int, columns: int) -> list[str]:
    """What the sheet leaves out: groups beyond the first `shown`, members beyond `columns`."""
    sizes = table.groupby("group").size()
    lines = []
    if len(sizes) > shown:
        lines.append(f"{len(sizes) - shown} more groups not shown "
                     f"({int(sizes.iloc[shown:].sum())} images): see dupes.csv")
    cut = int((sizes.iloc[:shown] - columns).clip(lower=0).sum())
    if cut:
        lines.append(f"{cut} more members of the groups shown are not drawn: see dupes.csv")
    return lines


def _caption(reason: str, distance) -> str:
    """'cropped d=6', 'same bytes'; a * marks a copy linked to the keeper only through others."""
    plain = str(reason).replace(LINKED, "")
    text = plain if plain.startswith("same") else f"{plain} d={distance}"
    return text + (" *" if LINKED in str(reason) else "")


def _cached_hashes(workdir: Path, readable: pd.DataFrame, root: Path,
                   columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Hashes from the last run for files unchanged on disk (path, bytes, mtime), and the
    readable files that changed since the scan."""
    current = file_identity(readable["path"], root)
    differs = (current[["bytes", "mtime"]].to_numpy()
               != readable[["bytes", "mtime"]].to_numpy()).any(axis=1)
    changed = current.loc[differs, "path"].tolist()
    previous = read_run(workdir, "dedupe") or {}
    if previous.get("settings", {}).get("hash_method") != HASH_METHOD:
        return pd.DataFrame(columns=["path", *columns]), changed
    cached = unchanged_rows(readable, current, columns).dropna(subset=columns)
    return cached[["path", *columns]], changed


def _hash_all(workdir: Path, readable: pd.DataFrame, root: Path, kinds: tuple[str, ...],
              workers: int | None, quiet: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Hash columns for every readable file: cached ones reused, each new content hashed once.

    Returns (path + hash columns, the freshly hashed rows with hash_error, counts).
    """
    columns = hash_columns(kinds)
    cached, changed = _cached_hashes(workdir, readable, root, columns)
    todo = readable[~readable["path"].isin(cached["path"])]
    stale = todo["path"].isin(changed)   # its sha256 is out of date: hash it on its own
    known = readable.loc[readable["path"].isin(cached["path"]), "sha256"]
    pick = todo[stale | (~todo["sha256"].isin(known) & ~todo["sha256"].duplicated())]
    started = time.time()
    fresh = hash_files([str(root / p) for p in pick["path"]], kinds, workers=workers, quiet=quiet)
    seconds = time.time() - started
    fresh.insert(0, "path", pick["path"].to_numpy())
    computed = pd.concat([cached, fresh.loc[~stale[pick.index].to_numpy(), ["path", *columns]]])
    by_content = readable[["path", "sha256"]].merge(computed, on="path").drop(columns="path")
    same = todo[~stale & ~todo["path"].isin(pick["path"])][["path", "sha256"]].merge(
        by_content.drop_duplicates("sha256"), on="sha256")
    hashes = pd.concat([cached, fresh[["path", *columns]], same[["path", *columns]]],
                       ignore_index=True)
    counts = {"reused": len(cached) + len(same), "changed": len(changed), "seconds": seconds}
    return hashes, fresh, counts


def dedupe(config: DatasetConfig, workdir: Path, *, kinds: str | Sequence[str] = DEFAULT_KINDS,
           threshold: int | None = None, mirror: bool = True, pixel_check: bool = True,
           workers: int | None = None, sheet_groups: int = 12, quiet: bool = False) -> dict:
    """Find duplicate groups, add the dedupe columns to the manifest, write dupes.csv/.png."""
    started = time.time()
    try:
        kinds = parse_kinds(kinds)
        thresholds = thresholds_for(kinds, threshold)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    workdir, root = Path(workdir), Path(config.root)
    columns = hash_columns(kinds)
    with workdir_lock(workdir):
        manifest = read_manifest(workdir, required=_SCAN_NEEDS)
        readable = manifest[manifest["readable"].astype(bool)]
        hashes, fresh, counts = _hash_all(workdir, readable, root, kinds, workers, quiet)
        rows = readable[_SCAN_NEEDS].merge(hashes.dropna(subset=columns), on="path")
        rows = rows.sort_values("path").reset_index(drop=True)
        hash_arrays = {c: to_uint64(rows[c]) for c in columns}

        def digest(index: np.ndarray) -> list:
            paths = [str(root / p) for p in rows["path"].to_numpy()[index]]
            return pixel_digests(paths, workers=workers, quiet=quiet)

        group_started = time.time()
        result = group_duplicates(rows, hash_arrays, thresholds, mirror=mirror,
                                  pixel_digest=digest if pixel_check else None)
        group_seconds = time.time() - group_started
        new = manifest[["path"]].merge(hashes.astype({c: "string" for c in columns}),
                                       on="path", how="left").merge(result, on="path", how="left")
        manifest = merge_columns(manifest, new.astype(OUTPUT_TYPES))
        write_manifest(manifest, workdir)
        table = dupes_table(manifest)
        csv_path = workdir / "dupes.csv"
        atomic_write(csv_path, lambda tmp: table.to_csv(tmp, index=False))
        sheet = contact_sheet(sheet_rows(table, root, sheet_groups), workdir / "dupes.png",
                              max_columns=SHEET_COLUMNS, legend=SHEET_LEGEND,
                              footer=sheet_footer(table, sheet_groups, SHEET_COLUMNS))
        summary = summarize(manifest, table, fresh, cached=counts["reused"],
                            changed=counts["changed"], thresholds=thresholds, mirror=mirror)
        summary.update(csv=str(csv_path), sheet=str(sheet) if sheet else None,
                       hash_seconds=round(counts["seconds"], 2),
                       hash_images_per_second=round(len(fresh) / counts["seconds"], 1)
                       if len(fresh) and counts["seconds"] > 0 else None,
                       group_seconds=round(group_seconds, 2),
                       seconds=round(time.time() - started, 2))
        settings = {"kinds": list(kinds), "thresholds": thresholds, "mirror": mirror,
                    "pixel_check": pixel_check, "hash_method": HASH_METHOD,
                    "pixel_check_radius": PIXEL_CHECK_RADIUS}
        record_run(workdir, "dedupe", settings=settings, summary=summary, started=started)
    return summary


def summarize(manifest: pd.DataFrame, table: pd.DataFrame, fresh: pd.DataFrame, *, cached: int,
              changed: int, thresholds: dict, mirror: bool) -> dict:
    """Counts a user checks after dedupe."""
    members = manifest[manifest["dup_group"].notna()]
    failed = fresh[fresh["hash_error"].notna()]
    sizes = members.groupby("dup_group").size().sort_values(ascending=False)
    reasons = table["reason"].dropna().str.replace(LINKED, "", regex=False)
    return {
        "images": int(manifest["readable"].astype(bool).sum()), "reused": cached,
        "hashed": int(len(fresh) - len(failed)),
        "hash_failed": {str(k): sorted(g["path"]) for k, g in failed.groupby("hash_error")},
        "changed_since_scan": changed, "kinds": list(thresholds), "thresholds": thresholds,
        "mirror": mirror, "groups": int(len(sizes)), "images_in_groups": int(len(members)),
        "redundant": int(len(members) - len(sizes)), "largest_groups": sizes.head(5).tolist(),
        "by_reason": {k: int(v) for k, v in reasons.value_counts().sort_index().items()},
        "linked_through_others": int(table["reason"].str.contains("linked", na=False).sum()),
        "cross_split": leak_report(members, "given_split", max_listed=10)
        if "given_split" in members and members["given_split"].notna().any() else None,
        "label_conflicts": label_conflicts(members) if "label" in members else None,
    }


def describe(summary: dict) -> str:
    """A short human summary of a dedupe run."""
    kinds = ", ".join(f"{k}<={v}" for k, v in summary["thresholds"].items())
    lines = [f"Deduplicated {summary['images']} images ({kinds} bits"
             f"{', mirror on' if summary['mirror'] else ''}): hashed {summary['hashed']}, "
             f"reused {summary['reused']} (cached, or of a byte-identical file), "
             f"in {summary['seconds']} s.",
             f"{summary['groups']} duplicate groups hold {summary['images_in_groups']} images; "
             f"{summary['redundant']} copies are redundant (largest groups: "
             f"{', '.join(map(str, summary['largest_groups'])) or '-'})."]
    if summary["by_reason"]:
        lines.append("copies by reason: "
                     + ", ".join(f"{k} {v}" for k, v in summary["by_reason"].items()))
    if summary.get("cross_split"):
        lines.append(describe_leaks(summary["cross_split"], show=0).splitlines()[0]
                     + " (groups listed in dupes.csv)")
    conflicts = summary.get("label_conflicts")
    if conflicts and conflicts["groups"]:
        chained = (f", {conflicts['chained']} of them joined through chains of near matches "
                   f"(may be different pictures)" if conflicts.get("chained") else "")
        lines.append(f"{conflicts['groups']} groups mix labels (members filed under different "
                     f"classes{chained}; see MIXED LABELS in dupes.png)")
    for reason, paths in summary["hash_failed"].items():
        lines.append(f"  not hashed, {reason}: {len(paths)} — {', '.join(paths[:5])}")
    if summary["changed_since_scan"]:
        lines.append(f"{summary['changed_since_scan']} files changed since the scan: "
                     f"run `curate scan` again so sizes and checksums are current")
    sheet = f" and {summary['sheet']}" if summary["sheet"] else ""
    lines.append(f"wrote {summary['csv']}{sheet}")
    return "\n".join(lines)
