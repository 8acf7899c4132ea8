"""`curate dedupe`: exact and near-duplicate groups, one keeper each, and train/test leakage.

The grouping itself is curation/grouping.py (pure); this module adds the disk I/O: the hash
cache in the manifest, the manifest columns, dupes.csv, the dupes.png contact sheet, the summary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from curation.cluster import cluster_setting
from curation.config import ConfigError, DatasetConfig
from curation.dedupe.embedding import CANDIDATE_TIERS, GROUP_BITS, MIN_ALIGNMENT, NOT_ALIGNED
from curation.dedupe.geometry import THUMB_SIDE, thumbnails
from curation.dedupe.grouping import (DEFAULT_KINDS, LINKED, PIXEL_CHECK_RADIUS, group_duplicates,
                                      thresholds_for)
from curation.dedupe.hamming import BYTES_PER_PAIR
from curation.dedupe.hashing import (HASH_METHOD, hash_columns, hash_files, parse_kinds,
                                     pixel_digests, to_uint64)
from curation.leaks import describe_leaks, leak_report
from curation.manifest import DEDUPE_COLUMNS, file_identity, unchanged_rows
from curation.settings import setting
from curation.sheets import contact_sheet
from curation.steps import Step, Workdir, resolve_settings, run_step

OUTPUT_TYPES = {"dup_group": "Int64", "dup_keeper": "boolean", "dup_of": "string",
                "dup_distance": "Int64", "dup_reason": "string", "dup_keeper_reason": "string",
                "dup_split": "string"}
EMBEDDING_MODES = ("auto", "on", "off")
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
               "dup_keeper_reason", "dup_split", "label", "given_split", "width", "height",
               "bytes"]
    table = table[[c for c in columns if c in table.columns]]
    table = table.sort_values(["dup_group", "dup_keeper", "dup_distance", "path"],
                              ascending=[True, False, True, True])
    return table.rename(columns={"dup_group": "group", "dup_keeper": "keeper",
                                 "dup_distance": "distance", "dup_reason": "reason",
                                 "dup_split": "split"})


SHEET_LEGEND = (
    "Each row is one duplicate group; the first picture is the one kept (KEEP WxH). Other "
    "captions say how a copy matches it:",
    "exact same bytes / same pixels = an exact copy; near, cropped, mirrored(+cropped) pN dN = "
    "bits of each perceptual hash apart in that alignment; embedding cos C al A = embeddings "
    "alike and one picture found in the other (A: its correlation);",
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
        cut = members["split"].dropna() if "split" in members else ()
        title += f" | {cut.iloc[0].split(':')[0]}" if len(cut) else ""
        items = []
        for row in members.itertuples(index=False):
            first = f"KEEP {row.width}x{row.height}" if row.keeper else _caption(row.reason)
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


def _rule(reason: str) -> str:
    """The rule of a dup_reason ('mirrored: phash 4, dhash 3 bits' -> 'mirrored'); copies
    linked to their keeper only through others count as 'linked'."""
    return "linked" if LINKED in reason else reason.split(":")[0]


def _caption(reason: str) -> str:
    """'cropped: phash 6, dhash 2 bits' -> 'cropped p6 d2'; a * marks a copy linked to the
    keeper only through others."""
    rule, _, figures = str(reason).replace(LINKED, "").partition(": ")
    short = (figures.replace("phash ", "p").replace("dhash ", "d").replace("whash ", "w")
             .replace("ahash ", "a").replace(" bits", "").replace(",", "")
             .replace("cosine ", "cos ").replace("aligned ", "al "))
    return f"{rule} {short}" + (" *" if LINKED in str(reason) else "")


def _cached_hashes(work: Workdir, readable: pd.DataFrame,
                   columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Hashes from the last run for files unchanged on disk (path, bytes, mtime), and the
    readable files that changed since the scan."""
    current = file_identity(readable["path"], work.root)
    differs = (current[["bytes", "mtime"]].to_numpy()
               != readable[["bytes", "mtime"]].to_numpy()).any(axis=1)
    changed = current.loc[differs, "path"].tolist()
    cached = unchanged_rows(readable, current, columns, made_with=work.last().get("hash_method"),
                            wanted=HASH_METHOD).dropna(subset=columns)
    return cached[["path", *columns]], changed


def _hash_all(work: Workdir, readable: pd.DataFrame, kinds: tuple[str, ...],
              workers: int | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Hash columns for every readable file: cached ones reused, each new content hashed once.

    Returns (path + hash columns, the freshly hashed rows with hash_error, counts).
    """
    columns = hash_columns(kinds)
    cached, changed = _cached_hashes(work, readable, columns)
    todo = readable[~readable["path"].isin(cached["path"])]
    stale = todo["path"].isin(changed)   # its sha256 is out of date: hash it on its own
    known = readable.loc[readable["path"].isin(cached["path"]), "sha256"]
    pick = todo[stale | (~todo["sha256"].isin(known) & ~todo["sha256"].duplicated())]
    started = time.time()
    fresh = hash_files([str(work.root / p) for p in pick["path"]], kinds, workers=workers,
                       quiet=work.quiet)
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


@dataclass(frozen=True)
class Settings:
    """What `curate dedupe` can be told."""

    kinds: tuple[str, ...] = setting(
        ",".join(DEFAULT_KINDS), "Perceptual hashes, comma-separated from phash, dhash, whash, ahash. The "
        "first one is searched; with several, every one must be within its threshold.",
        flag="--hash", check=parse_kinds, kind=str)
    threshold: int | None = setting(
        None, "Largest Hamming distance (bits) for every hash. Default: measured per hash "
        "(phash,dhash: 8 each; phash alone: 6), see docs/dedupe.md.", kind=int, low=0, high=64)
    mirror: bool = setting(True, "Count mirrored copies as duplicates.")
    embeddings: str = setting(
        "auto", "Embedding stage (finds copies after several edits at once), with the dataset's "
        "backbone and weights: auto uses it when the weights are on disk ($CURATE_WEIGHTS or a "
        "file in datasets.yaml), on also downloads ImageNet weights, off is hash-only.",
        choices=EMBEDDING_MODES)
    pixel_check: bool = setting(True, "Confirm far-apart matches by pixels.", cli=False)
    workers: int | None = setting(None, "Processes (default: cores).", kind=int, low=1, high=256,
                                  result=False)
    cluster: str | None = cluster_setting()
    search_memory: int = setting(512, "Working memory of the near-duplicate search, in MB: "
                                 "pairs are compared in blocks that fit (not all pairs at once).",
                                 low=16, high=1 << 20, result=False)
    sheet_groups: int = setting(12, "Largest groups drawn in <workdir>/dupes.png.", low=0,
                                high=500, result=False)


def run(work: Workdir, settings: Settings) -> dict:
    """Find duplicate groups, add the dedupe columns to the manifest, write dupes.csv/.png."""
    kinds, root = settings.kinds, work.root
    thresholds = thresholds_for(kinds, settings.threshold)
    columns = hash_columns(kinds)
    manifest = work.read()
    readable = manifest[manifest["readable"].astype(bool)]
    hashes, fresh, counts = _hash_all(work, readable, kinds, settings.workers)
    rows = readable[_SCAN_NEEDS].merge(hashes.dropna(subset=columns), on="path")
    rows = rows.sort_values("path").reset_index(drop=True)
    hash_arrays = {c: to_uint64(rows[c]) for c in columns}

    def digest(index: np.ndarray) -> list:
        paths = [str(root / p) for p in rows["path"].to_numpy()[index]]
        return pixel_digests(paths, workers=settings.workers, quiet=work.quiet)

    vectors, embedding = embeddings_for(work, rows, settings)
    group_started = time.time()
    result = group_duplicates(rows, hash_arrays, thresholds, mirror=settings.mirror,
                              pixel_digest=digest if settings.pixel_check else None,
                              vectors=vectors, thumbnails=lambda index: thumbnails(
                                  [str(root / p) for p in rows["path"].to_numpy()[index]],
                                  workers=settings.workers, quiet=work.quiet),
                              max_pairs=settings.search_memory * 2**20 // BYTES_PER_PAIR)
    group_seconds = time.time() - group_started
    new = manifest[["path"]].merge(hashes.astype({c: "string" for c in columns}),
                                   on="path", how="left").merge(result, on="path", how="left")
    manifest = work.merge(manifest, new.astype(OUTPUT_TYPES))
    table = dupes_table(manifest)
    csv_path = work.write_csv("dupes.csv", table)
    sheet = contact_sheet(sheet_rows(table, root, settings.sheet_groups), work.out("dupes.png"),
                          max_columns=SHEET_COLUMNS, legend=SHEET_LEGEND,
                          footer=sheet_footer(table, settings.sheet_groups, SHEET_COLUMNS))
    summary = summarize(manifest, table, fresh, cached=counts["reused"],
                        changed=counts["changed"], thresholds=thresholds, mirror=settings.mirror)
    summary.update(csv=str(csv_path), sheet=str(sheet) if sheet else None, embeddings=embedding,
                   hash_seconds=round(counts["seconds"], 2),
                   hash_images_per_second=round(len(fresh) / counts["seconds"], 1)
                   if len(fresh) and counts["seconds"] > 0 else None,
                   group_seconds=round(group_seconds, 2),
                   seconds=round(time.time() - work.started, 2))
    work.derived["thresholds"] = thresholds
    return summary


def embeddings_for(work: Workdir, rows: pd.DataFrame,
                   settings: Settings) -> tuple[np.ndarray | None, dict]:
    """Flip-invariant embeddings aligned with rows (image + mirror averaged), through the embed
    step's cache (the last embed run's backbone and weights, else datasets.yaml's; only what the
    cache lacks is embedded), or None for the hash-only mode; with what happened."""
    from curation.embed.backbones import resolve_weights
    from curation.embed.step import STEP as EMBED, ensure_embeddings

    if settings.embeddings == "off":
        return None, {"used": False, "reason": "--embeddings off"}
    last = work.last(EMBED.name)
    chosen = {k: last[k] for k in ("backbone", "weights", "image_size", "engine", "seed")
              if last.get(k) is not None}
    embed_settings = resolve_settings(EMBED, work.config, {**chosen, "tta": True})
    try:
        resolved = resolve_weights(embed_settings.backbone, embed_settings.weights)
    except ConfigError as exc:          # e.g. a dataset trained from scratch ('scratch')
        if settings.embeddings == "on":
            raise
        return None, {"used": False, "reason": f"no usable backbone weights ({exc})"}
    if resolved is None:
        return None, {"used": False, "reason": "weights none (random features find nothing)"}
    if resolved == "imagenet" and settings.embeddings == "auto":
        return None, {"used": False, "reason": "no backbone weights on disk: set $CURATE_WEIGHTS "
                      "or a weights file in datasets.yaml, or --embeddings on to download "
                      "ImageNet's"}
    run = ensure_embeddings(work, rows, embed_settings)
    return run.vectors, {"used": True, "backbone": embed_settings.backbone,
                         "computed": run.computed, "reused": run.reused,
                         "failed": len(run.failed), "seconds": round(run.seconds, 2),
                         "cache_file": str(run.cache_file), "candidates": [list(t) for t in CANDIDATE_TIERS],
                         "min_alignment": MIN_ALIGNMENT}


def dedupe(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate dedupe` as a function: see Settings for the keyword arguments."""
    return run_step(STEP, config, workdir, quiet=quiet, **settings)


def summarize(manifest: pd.DataFrame, table: pd.DataFrame, fresh: pd.DataFrame, *, cached: int,
              changed: int, thresholds: dict, mirror: bool) -> dict:
    """Counts a user checks after dedupe."""
    members = manifest[manifest["dup_group"].notna()]
    failed = fresh[fresh["hash_error"].notna()]
    sizes = members.groupby("dup_group").size().sort_values(ascending=False)
    reasons = table["reason"].dropna().map(_rule)
    return {
        "images": int(manifest["readable"].astype(bool).sum()), "reused": cached,
        "hashed": int(len(fresh) - len(failed)),
        "hash_failed": {str(k): sorted(g["path"]) for k, g in failed.groupby("hash_error")},
        "changed_since_scan": changed, "kinds": list(thresholds), "thresholds": thresholds,
        "mirror": mirror, "groups": int(len(sizes)), "images_in_groups": int(len(members)),
        "redundant": int(len(members) - len(sizes)), "largest_groups": sizes.head(5).tolist(),
        "by_reason": {k: int(v) for k, v in reasons.value_counts().sort_index().items()},
        "linked_through_others": int(table["reason"].str.contains("linked", na=False).sum()),
        "chains_cut": _chains_cut(table),
        "cross_split": leak_report(members, "given_split", max_listed=10)
        if "given_split" in members and members["given_split"].notna().any() else None,
        "label_conflicts": label_conflicts(members) if "label" in members else None,
    }


def _chains_cut(table: pd.DataFrame) -> dict:
    """Groups that were cut because their members chained different pictures."""
    cut = table[table["split"].notna()] if "split" in table else table.iloc[:0]
    sources = cut["split"].str.extract(r"of (\d+) into (\d+)").astype(int).drop_duplicates()
    return {"groups_cut": int(len(sources)), "pieces": int(cut["group"].nunique()),
            "largest_cut": int(sources[0].max()) if len(sources) else 0,
            "group_bits": GROUP_BITS}


def _describe_embeddings(embedding: dict) -> str:
    if not embedding["used"]:
        return (f"hash-only (no embedding stage: {embedding['reason']}); copies edited several "
                f"ways at once (mirrored and cropped and re-saved) may be missed")
    tiers = " or ".join(f"cosine >= {c} within {b} bits" for c, b in embedding["candidates"])
    return (f"embedding stage: {embedding['backbone']}, candidates at {tiers}, confirmed by "
            f"the geometric check (aligned >= {embedding['min_alignment']}); embedded "
            f"{embedding['computed']}, reused {embedding['reused']} from the cache")


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
    lines.append(_describe_embeddings(summary["embeddings"]))
    chains = summary["chains_cut"]
    if chains["groups_cut"]:
        lines.append(f"{chains['groups_cut']} chained groups (largest {chains['largest_cut']}) "
                     f"were cut into {chains['pieces']}: their members were not all alike (within "
                     f"{chains['group_bits']} bits, or found in each other; dupes.csv: split)")
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


HELP = """Find exact and near-duplicate photos, keep one per group, and report train/test leaks.

\b
Example: curate dedupe indian-cars-7
         curate dedupe stanford-cars-25 --hash phash --threshold 6 --no-mirror
         curate dedupe indian-cars-7 --embeddings off      # hash-only, no model
Exact: same bytes, or same pixels in another file format. Near: resized, re-compressed,
cropped by a few percent, brightened, watermarked or mirrored copies (mirrored crops too).
Embedding: copies edited several ways at once, found by flip-invariant image embeddings and
confirmed by looser hashes (when weights are on disk). A group whose members are not all
alike is cut (dup_split). The keeper of each group has the most pixels, then the most bytes
per pixel, then the first path. Adds hash columns and dup_group, dup_keeper, dup_of,
dup_distance, dup_reason, dup_split to the manifest and writes dupes.csv and dupes.png; a
re-run only hashes new or changed files and embeds only what the cache lacks.
"""


STEP = Step("dedupe", Settings, run, describe, help=HELP, needs=tuple(_SCAN_NEEDS),
            uses=("label", "given_split"),
            adds=(*DEDUPE_COLUMNS, "dup_reason", "dup_keeper_reason", "dup_split"),
            outputs=("dupes.csv",),
            constants={"hash_method": HASH_METHOD, "pixel_check_radius": PIXEL_CHECK_RADIUS,
                       "candidate_tiers": [list(t) for t in CANDIDATE_TIERS],
                       "min_alignment": MIN_ALIGNMENT, "not_aligned": NOT_ALIGNED,
                       "thumb_side": THUMB_SIDE, "group_bits": GROUP_BITS})
