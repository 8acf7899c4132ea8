"""The pure core of `curate dedupe`: which pairs are duplicates, their groups, and the keepers.

Exact: same bytes (the scan's sha256) or same decoded pixels. Near: every chosen perceptual hash
within its Hamming threshold, as is, mirrored, or against the other's inner crop. Groups are the
connected components of all duplicate pairs. Arrays and DataFrames in and out, no disk access
(identical pixels are checked through a callback), so tests and the bench use it directly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.dedupe.hamming import MAX_PAIRS, distances, pairs_within
from curation.vocabulary import KEEPER_ASCENDING, KEEPER_KEYS, keeper_keys

DEFAULT_KINDS = ("phash", "dhash")
# Largest Hamming distance (bits) still counted as a near duplicate, per hash kind, when the
# kind is used alone (SOLO) or together with others (PAIRED: every kind must agree, so each
# may be looser). Measured by bench/dedupe_bench.py on stanford-cars-25 with planted copies:
# the highest-recall setting whose distinct-car pair precision stays >= 0.99 (docs/dedupe.md).
SOLO_THRESHOLDS = {"phash": 6, "dhash": 7, "whash": 0, "ahash": 1}
PAIRED_THRESHOLDS = {"phash": 8, "dhash": 8, "whash": 8, "ahash": 8}
MIRROR_SHARE = 0.75
# Same-size pairs within this pHash distance get a full decode to look for identical pixels.
PIXEL_CHECK_RADIUS = 8
LINKED = " (linked through other copies)"


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
    Mirrored matches get 3/4 of the threshold: many cars face the other way in otherwise alike
    photos, while a real mirrored copy is only flipped and re-saved (bench: mirrored copies
    found 0.98 at 3/4, 0.91 at 1/2, with no pair of distinct cars joined either way).
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
                    alignments: dict, *, max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j whose `kind` hashes are within radius in some alignment (a superset),
    searched in blocks of max_pairs (hamming.pairs_within)."""
    plain = hashes[kind]
    n = len(plain)
    i, j, _ = pairs_within(plain, radius, max_pairs=max_pairs)
    variants = [hashes[kind + suffix] for suffix, _ in alignments.values() if suffix]
    if variants:
        q, b, _ = pairs_within(plain, radius, queries=np.concatenate(variants),
                               max_pairs=max_pairs)
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
    frame = keeper_keys(rows)
    frame["label"] = labels
    frame["row"] = np.arange(len(frame))
    grouped = frame[frame["label"] >= 0].sort_values(
        ["label", *KEEPER_KEYS], ascending=[True, *KEEPER_ASCENDING], kind="stable")
    leaders = grouped.groupby("label").head(2)
    runner_up = leaders.groupby("label").nth(1).set_index("label")
    keepers = leaders.groupby("label").head(1).set_index("label")
    reason = np.where(keepers["pixels"] > runner_up.loc[keepers.index, "pixels"], "most pixels",
                      np.where(keepers["bytes_per_pixel"]
                               > runner_up.loc[keepers.index, "bytes_per_pixel"],
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
                     pixel_digest=None, max_pairs: int = MAX_PAIRS) -> pd.DataFrame:
    """The dedupe columns for hashed rows (path, width, height, bytes, sha256; hashes aligned).

    hashes: hash column -> uint64 array for every column of hash_columns(thresholds).
    pixel_digest: see exact_pairs; None skips the identical-pixels check.
    max_pairs: hash pairs examined per block of the search (bounds its memory).
    """
    kinds = list(thresholds)
    alignments = alignments_for(mirror)
    radius = max(thresholds[kinds[0]], PIXEL_CHECK_RADIUS if pixel_digest else 0)
    ci, cj = candidate_pairs(hashes, kinds[0], radius, alignments, max_pairs=max_pairs)
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
