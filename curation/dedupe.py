"""`curate dedupe`: exact and near-duplicate groups, one keeper each, and train/test leakage.

Exact: same bytes (the scan's sha256) or same decoded pixels. Near: every chosen perceptual hash
within its Hamming threshold, as is, mirrored, or against the other's inner crop. Groups are the
connected components of all duplicate pairs. The pure core works on arrays and DataFrames;
`dedupe()` adds the disk I/O, the hash cache and the outputs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .config import ConfigError, DatasetConfig
from .hamming import distances, pairs_within
from .hashing import DECODE_SIDE, hash_columns, hash_files, parse_kinds, pixel_digests, to_uint64
from .leaks import describe_leaks, leak_report
from .manifest import (atomic_write, merge_columns, read_manifest, read_run, record_run,
                       unchanged_rows, workdir_lock, write_manifest)
from .sheets import contact_sheet

DEFAULT_KINDS = ("phash", "dhash")
# Largest Hamming distance (bits) still counted as a near duplicate, per hash kind, when the
# kind is used alone (SOLO) or together with others (PAIRED: every kind must agree, so each
# may be looser). Measured by bench/dedupe_bench.py on stanford-cars-25 with planted copies:
# the highest-recall setting whose distinct-car pair precision stays >= 0.99 (docs/dedupe.md).
SOLO_THRESHOLDS = {"phash": 6, "dhash": 7, "whash": 0, "ahash": 0}
PAIRED_THRESHOLDS = {"phash": 8, "dhash": 8, "whash": 8, "ahash": 8}
MIRROR_SHARE = 0.5
# Same-size pairs within this pHash distance get a full decode to look for identical pixels.
PIXEL_CHECK_RADIUS = 8
OUTPUT_TYPES = {"dup_group": "Int64", "dup_keeper": "boolean", "dup_of": "string",
                "dup_distance": "Int64", "dup_reason": "string", "dup_keeper_reason": "string"}
LINKED = " (linked through other copies)"
_SCAN_NEEDS = ["path", "readable", "width", "height", "bytes", "mtime", "sha256"]


def thresholds_for(kinds: Sequence[str], threshold: int | None) -> dict[str, int]:
    """Per-kind thresholds: the measured defaults, or one value for all kinds."""
    if threshold is not None and not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be between 0 and 64 bits, got {threshold}")
    table = SOLO_THRESHOLDS if len(kinds) == 1 else PAIRED_THRESHOLDS
    return {k: table[k] if threshold is None else threshold for k in kinds}


def alignments_for(mirror: bool) -> dict[str, tuple[str, float]]:
    """How two pictures may line up, named as dup_reason says it: reason -> (hash variant
    suffix, share of the threshold allowed).

    A variant of one image is compared with the plain hash of the other, both ways round.
    Mirrored matches get half the threshold: many cars face the other way in otherwise alike
    photos, while a real mirrored copy is only flipped and re-saved (bench: no recall lost).
    """
    names = {"near": ("", 1.0), "cropped": ("_inner", 1.0)}
    if mirror:
        names["mirrored"] = ("_mirror", MIRROR_SHARE)
    return names


def hash_matches(i: np.ndarray, j: np.ndarray, hashes: dict[str, np.ndarray],
                 thresholds: dict[str, int], alignments: dict) -> pd.DataFrame:
    """Which pairs (i, j) are near duplicates: in some alignment, every kind is within threshold.

    hashes: hash column name (as hash_columns) -> uint64 array. Returns columns i, j, match
    (bool), alignment (the first that matched, else the closest) and distance (the first
    kind's bits in that alignment).
    """
    kinds = list(thresholds)
    ok, first = [], []
    for suffix, share in alignments.values():
        passed = np.ones(len(i), dtype=bool)
        for kind in kinds:
            plain, variant = hashes[kind], hashes[kind + suffix]
            d = np.minimum(distances(variant[i], plain[j]), distances(plain[i], variant[j]))
            passed &= d <= int(thresholds[kind] * share)
            if kind == kinds[0]:
                first.append(d.astype(np.int64))
        ok.append(passed)
    ok = np.array(ok).reshape(len(alignments), -1)
    first = np.array(first).reshape(len(alignments), -1)
    match = ok.any(axis=0)
    chosen = np.where(match, ok.argmax(axis=0), first.argmin(axis=0))
    columns = np.arange(len(i))
    return pd.DataFrame({"i": i, "j": j, "match": match,
                         "alignment": np.array(list(alignments), dtype=object)[chosen],
                         "distance": first[chosen, columns]})


def candidate_pairs(hashes: dict[str, np.ndarray], kind: str, radius: int,
                    alignments: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j whose `kind` hashes are within radius in some alignment (a superset)."""
    plain = hashes[kind]
    n = len(plain)
    i, j, _ = pairs_within(plain, radius)
    variants = [hashes[kind + suffix] for suffix, _ in alignments.values() if suffix]
    if variants:
        q, b, _ = pairs_within(plain, radius, queries=np.concatenate(variants))
        q %= max(n, 1)
        other = q != b
        i = np.concatenate([i, np.minimum(q, b)[other]])
        j = np.concatenate([j, np.maximum(q, b)[other]])
    codes = np.unique(i * max(n, 1) + j)
    return codes // max(n, 1), codes % max(n, 1)


def equal_key_pairs(keys: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row with a non-null key to the first row with the same key."""
    frame = pd.DataFrame({"key": pd.Series(keys, dtype="object")}).reset_index()
    frame = frame[frame["key"].notna()]
    first = frame.groupby("key")["index"].transform("min")
    linked = frame[frame["index"] != first]
    return first[linked.index].to_numpy(np.int64), linked["index"].to_numpy(np.int64)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label per row (connected components of the pairs); -1 for rows in no pair."""
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=labels.max() + 1 if n else 0)
    return np.where(sizes[labels] > 1, labels, -1) if n else labels


def choose_keepers(rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Number the groups and pick one keeper each: most pixels, then least compressed, then path.

    rows: path, width, height, bytes (one per image, aligned with labels). Returns, per row,
    dup_group (1 = largest group; <NA> when unique), keeper (bool), keeper_row, keeper_reason.
    """
    frame = rows[["path"]].copy()
    frame["label"] = labels
    frame["pixels"] = rows["width"].astype("float64") * rows["height"].astype("float64")
    frame["bpp"] = rows["bytes"].astype("float64") / frame["pixels"].where(frame["pixels"] > 0)
    frame["row"] = np.arange(len(frame))
    grouped = frame[frame["label"] >= 0].sort_values(
        ["label", "pixels", "bpp", "path"], ascending=[True, False, False, True], na_position="last")
    leaders = grouped.groupby("label").head(2)
    runner_up = leaders.groupby("label").nth(1).set_index("label")
    keepers = leaders.groupby("label").head(1).set_index("label")
    reason = np.where(keepers["pixels"] > runner_up.loc[keepers.index, "pixels"], "most pixels",
                      np.where(keepers["bpp"] > runner_up.loc[keepers.index, "bpp"],
                               "least compressed", "first path"))
    sizes = grouped.groupby("label").size()
    ranking = pd.DataFrame({"size": sizes, "keeper_path": keepers["path"]})
    ranking = ranking.sort_values(["size", "keeper_path"], ascending=[False, True])
    group_id = pd.Series(np.arange(1, len(ranking) + 1), index=ranking.index)
    out = pd.DataFrame(index=frame.index)
    member = frame["label"] >= 0
    out["dup_group"] = frame["label"].map(group_id).astype("Int64")
    out["keeper_row"] = frame["label"].map(keepers["row"]).astype("Int64")
    out["keeper"] = member & (out["keeper_row"] == frame["row"]).fillna(False)
    out["keeper_reason"] = frame["label"].map(pd.Series(reason, index=keepers.index))
    return out


def exact_pairs(rows: pd.DataFrame, plain: np.ndarray, ci: np.ndarray, cj: np.ndarray,
                pixel_digest=None) -> tuple[np.ndarray, np.ndarray]:
    """Edges (2, k) joining same-bytes rows, and same-pixels rows among the candidate pairs.

    Only candidates (ci, cj) of equal size, different bytes and pHash within PIXEL_CHECK_RADIUS
    are decoded in full: pixel_digest(row_indices) -> digests. Also returns the digest per row
    (None where not computed).
    """
    sha = rows["sha256"].to_numpy(object)
    digests = np.full(len(rows), None, dtype=object)
    if pixel_digest is not None:
        width, height = rows["width"].to_numpy(), rows["height"].to_numpy()
        check = ((distances(plain[ci], plain[cj]) <= PIXEL_CHECK_RADIUS) & (sha[ci] != sha[cj])
                 & (width[ci] == width[cj]) & (height[ci] == height[cj]))
        todo = np.unique(np.concatenate([ci[check], cj[check]]))
        if len(todo):
            digests[todo] = pixel_digest(todo)
    edges = np.concatenate([np.array(equal_key_pairs(sha)).reshape(2, -1),
                            np.array(equal_key_pairs(digests)).reshape(2, -1)], axis=1)
    return edges.astype(np.int64), digests


def group_duplicates(rows: pd.DataFrame, hashes: dict[str, np.ndarray],
                     thresholds: dict[str, int], *, mirror: bool = True,
                     pixel_digest=None) -> pd.DataFrame:
    """The dedupe columns for hashed rows (path, width, height, bytes, sha256; hashes aligned).

    hashes: hash column -> uint64 array for every column of hash_columns(thresholds).
    pixel_digest: see exact_pairs; None skips the identical-pixels check.
    """
    kinds = list(thresholds)
    alignments = alignments_for(mirror)
    radius = max(thresholds[kinds[0]], PIXEL_CHECK_RADIUS if pixel_digest else 0)
    ci, cj = candidate_pairs(hashes, kinds[0], radius, alignments)
    near = hash_matches(ci, cj, hashes, thresholds, alignments)
    exact, digests = exact_pairs(rows, hashes[kinds[0]], ci, cj, pixel_digest)
    near_edges = near.loc[near["match"], ["i", "j"]].to_numpy(np.int64).T.reshape(2, -1)
    labels = components(len(rows), *np.concatenate([near_edges, exact], axis=1))
    groups = choose_keepers(rows, labels)
    return _relation_to_keeper(groups, rows, hashes, thresholds, alignments, digests)


def _relation_to_keeper(groups: pd.DataFrame, rows: pd.DataFrame, hashes: dict[str, np.ndarray],
                        thresholds: dict[str, int], alignments: dict,
                        digests: np.ndarray) -> pd.DataFrame:
    """dup_of, dup_distance and dup_reason: how each copy matches its group's keeper."""
    member = groups["dup_group"].notna().to_numpy()
    keeper_row = groups["keeper_row"].fillna(0).to_numpy(np.int64)
    rel = hash_matches(np.arange(len(groups)), keeper_row, hashes, thresholds, alignments)
    sha = rows["sha256"].to_numpy(object)
    same_bytes = sha == sha[keeper_row]
    same_pixels = (digests != None) & (digests == digests[keeper_row])  # noqa: E711
    exact = same_bytes | same_pixels
    reason = np.where(same_bytes, "same bytes",
                      np.where(same_pixels, "same pixels", rel["alignment"].to_numpy(str)))
    linked = ~exact & ~rel["match"].to_numpy()
    reason = np.where(linked, np.char.add(reason.astype(str), LINKED), reason)
    keeper = groups["keeper"].to_numpy()
    copy = member & ~keeper
    paths = rows["path"].to_numpy(object)
    return pd.DataFrame({
        "path": rows["path"].to_numpy(),
        "dup_group": groups["dup_group"].array,
        "dup_keeper": keeper | ~member,
        "dup_of": pd.Series(paths[keeper_row], dtype="string").where(copy),
        "dup_distance": pd.Series(np.where(exact | keeper, 0, rel["distance"]),
                                  dtype="Int64").where(member),
        "dup_reason": pd.Series(reason, dtype="string").where(copy),
        "dup_keeper_reason": pd.Series(groups["keeper_reason"].to_numpy(),
                                       dtype="string").where(member),
    })


def label_conflicts(members: pd.DataFrame) -> dict:
    """Groups whose members carry different labels (a copy filed under two classes)."""
    labels = members.dropna(subset=["label"]).groupby("dup_group")["label"].nunique()
    conflicted = labels[labels > 1]
    return {"groups": int(len(conflicted)),
            "example_groups": [int(g) for g in conflicted.index[:10]]}


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


def sheet_rows(table: pd.DataFrame, root: Path, groups: int) -> list:
    """Contact-sheet rows for the largest groups: keeper first, captions with reason and split."""
    rows = []
    for group, members in list(table.groupby("group", sort=True))[:groups]:
        splits = sorted(set(members.get("given_split", pd.Series(dtype=object)).dropna()))
        labels = sorted(set(members.get("label", pd.Series(dtype=object)).dropna()))
        title = f"group {group}: {len(members)} images"
        title += f" | splits {', '.join(splits)}" if len(splits) > 1 else ""
        title += f" | labels {', '.join(labels)}" if len(labels) > 1 else ""
        items = []
        for row in members.itertuples(index=False):
            first = f"KEEP {row.width}x{row.height}" if row.keeper else _caption(row.reason,
                                                                                    row.distance)
            where = "/".join(str(v) for v in (getattr(row, "given_split", None),
                                              getattr(row, "label", None)) if pd.notna(v))
            items.append((root / row.path, f"{first}\n{where}"))
        rows.append((title, items))
    return rows


def _caption(reason: str, distance) -> str:
    """'cropped d=6', 'same bytes'; a * marks a copy linked to the keeper only through others."""
    plain = str(reason).replace(LINKED, "")
    text = plain if plain.startswith("same") else f"{plain} d={distance}"
    return text + (" *" if LINKED in str(reason) else "")


def _cached_hashes(workdir: Path, manifest: pd.DataFrame, root: Path,
                   columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Hashes from the last run for files unchanged on disk (path, bytes, mtime), and the
    readable files that changed since the scan."""
    readable = manifest[manifest["readable"].astype(bool)]
    stats = []
    for path in readable["path"]:
        try:
            info = (root / path).stat()
            stats.append((path, info.st_size, info.st_mtime))
        except OSError:
            stats.append((path, -1, -1.0))
    current = pd.DataFrame(stats, columns=["path", "bytes", "mtime"])
    differs = (current[["bytes", "mtime"]].to_numpy()
               != readable[["bytes", "mtime"]].to_numpy()).any(axis=1)
    changed = current.loc[differs, "path"].tolist()
    previous = read_run(workdir, "dedupe") or {}
    if previous.get("settings", {}).get("decode_side") != DECODE_SIDE:
        return pd.DataFrame(columns=["path", *columns]), changed
    cached = unchanged_rows(manifest, current, columns).dropna(subset=columns)
    return cached[["path", *columns]], changed


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
        cached, changed = _cached_hashes(workdir, manifest, root, columns)
        readable = manifest[manifest["readable"].astype(bool)]
        todo = readable[~readable["path"].isin(cached["path"])]
        stale = todo["path"].isin(changed)   # its sha256 is out of date: hash it on its own
        known = readable.loc[readable["path"].isin(cached["path"]), "sha256"]
        pick = todo[stale | (~todo["sha256"].isin(known) & ~todo["sha256"].duplicated())]
        hash_started = time.time()
        fresh = hash_files([str(root / p) for p in pick["path"]], kinds, workers=workers,
                           quiet=quiet)
        hash_seconds = time.time() - hash_started
        fresh.insert(0, "path", pick["path"].to_numpy())
        computed = pd.concat([cached, fresh.loc[~stale[pick.index].to_numpy(), ["path", *columns]]])
        by_content = readable[["path", "sha256"]].merge(computed, on="path").drop(columns="path")
        same = todo[~stale & ~todo["path"].isin(pick["path"])][["path", "sha256"]].merge(
            by_content.drop_duplicates("sha256"), on="sha256")
        hashes = pd.concat([cached, fresh[["path", *columns]], same[["path", *columns]]],
                           ignore_index=True)
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
        sheet = contact_sheet(sheet_rows(table, root, sheet_groups), workdir / "dupes.png")
        summary = summarize(manifest, table, fresh, cached=len(cached) + len(same),
                            changed=len(changed),
                            thresholds=thresholds, mirror=mirror)
        summary.update(csv=str(csv_path), sheet=str(sheet) if sheet else None,
                       hash_seconds=round(hash_seconds, 2),
                       hash_images_per_second=round(len(pick) / hash_seconds, 1)
                       if len(pick) and hash_seconds > 0 else None,
                       group_seconds=round(group_seconds, 2),
                       seconds=round(time.time() - started, 2))
        settings = {"kinds": list(kinds), "thresholds": thresholds, "mirror": mirror,
                    "pixel_check": pixel_check, "decode_side": DECODE_SIDE,
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
        lines.append(f"{conflicts['groups']} groups mix labels (same photo under two classes)")
    for reason, paths in summary["hash_failed"].items():
        lines.append(f"  not hashed, {reason}: {len(paths)} — {', '.join(paths[:5])}")
    if summary["changed_since_scan"]:
        lines.append(f"{summary['changed_since_scan']} files changed since the scan: "
                     f"run `curate scan` again so sizes and checksums are current")
    sheet = f" and {summary['sheet']}" if summary["sheet"] else ""
    lines.append(f"wrote {summary['csv']}{sheet}")
    return "\n".join(lines)
