"""The pure core of `curate dedupe`: which pairs are duplicates, their groups, and the keepers.

Exact: same bytes (the scan's sha256) or same decoded pixels. Near: every chosen perceptual hash
within its Hamming threshold, as is, mirrored, against the other's inner crop, or its mirrored
inner crop. Embedding (when vectors are given): high cosine similarity and every hash within a
looser bound in some alignment make a candidate, which the geometric check must confirm. Groups are the connected components of those pairs,
cut where a chain joins members that are not pairwise within the looser bound (chains.py).
Arrays and DataFrames in and out, no disk access (identical pixels are checked through a
callback), so tests and the bench use it directly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.dedupe.chains import member_pairs, split_chains
from curation.dedupe.embedding import (CANDIDATE_TIERS, GROUP_BITS, MIN_ALIGNMENT, NOT_ALIGNED,
                                       aligner, pair_cosines)
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
        names["mirrored+cropped"] = ("_mirror_inner", MIRROR_SHARE)
    return names


def full_share(alignments: dict) -> dict:
    """The same alignments, each allowed its whole bound (for the looser comparisons)."""
    return {name: (suffix, 1.0) for name, (suffix, _) in alignments.items()}


def hash_matches(i: np.ndarray, j: np.ndarray, hashes: dict[str, np.ndarray],
                 thresholds: dict[str, int], alignments: dict) -> pd.DataFrame:
    """Which pairs (i, j) are near duplicates: in some alignment, every kind is within threshold.

    hashes: hash column name (as hash_columns) -> uint64 array. Returns columns i, j, match
    (bool), alignment (the first that matched, else the closest), distance (the first kind's
    bits in that alignment) and bits_<kind> for every kind in that alignment.
    """
    kinds = list(thresholds)
    bits = np.zeros((len(alignments), len(kinds), len(i)), dtype=np.int64)
    limits = np.zeros((len(alignments), len(kinds), 1))
    for a, (suffix, share) in enumerate(alignments.values()):
        for k, kind in enumerate(kinds):
            plain, variant = hashes[kind], hashes[kind + suffix]
            bits[a, k] = np.minimum(distances(variant[i], plain[j]),
                                    distances(plain[i], variant[j]))
            limits[a, k] = int(thresholds[kind] * share)
    ok = (bits <= limits).all(axis=1)
    match = ok.any(axis=0)
    chosen = np.where(match, ok.argmax(axis=0), bits[:, 0].argmin(axis=0))
    columns = np.arange(len(i))
    out = pd.DataFrame({"i": i, "j": j, "match": match,
                        "alignment": np.array(list(alignments), dtype=object)[chosen],
                        "distance": bits[chosen, 0, columns]})
    for k, kind in enumerate(kinds):
        out[f"bits_{kind}"] = bits[chosen, k, columns]
    return out


def loose_bounds(thresholds: dict[str, int], confirm_bits: int) -> dict[str, int]:
    """The looser per-kind bound (confirming embedding pairs, keeping groups whole): at least
    confirm_bits, and never tighter than the near-duplicate threshold itself."""
    return {kind: max(confirm_bits, bits) for kind, bits in thresholds.items()}


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
                     thresholds: dict[str, int], *, mirror: bool = True, pixel_digest=None,
                     vectors: np.ndarray | None = None, thumbnails=None,
                     group_bits: int = GROUP_BITS, max_pairs: int = MAX_PAIRS) -> pd.DataFrame:
    """The dedupe columns for hashed rows (path, width, height, bytes, sha256; hashes aligned).

    hashes: hash column -> uint64 array for every column of hash_columns(thresholds).
    pixel_digest: see exact_pairs; None skips the identical-pixels check.
    max_pairs: hash pairs examined per block of the search (bounds its memory).
    vectors: (n, d) flip-invariant embeddings (NaN rows: none), or None for hash-only; with
    them, thumbnails(row_indices) -> geometry.thumbnail per row (decoded only for candidate
    pairs): the embedding stage's candidates (CANDIDATE_TIERS) join when the geometric check
    confirms them (MIN_ALIGNMENT), and a hash match it refutes (below NOT_ALIGNED: two
    renders of different cars in one pose on white) does not join.
    Groups are joined only through these pairs, then cut where two members are neither within
    group_bits of each other in some alignment nor a confirmed embedding pair (dup_split).
    """
    kinds = list(thresholds)
    alignments = alignments_for(mirror)
    everywhere = full_share(alignments)
    radius = max(thresholds[kinds[0]], PIXEL_CHECK_RADIUS if pixel_digest else 0)
    ci, cj = candidate_pairs(hashes, kinds[0], radius, alignments, max_pairs=max_pairs)
    near = hash_matches(ci, cj, hashes, thresholds, alignments)
    exact, digests = exact_pairs(rows, hashes[kinds[0]], ci, cj, pixel_digest)
    near = near.loc[near["match"], ["i", "j"]].to_numpy(np.int64).T.reshape(2, -1)
    edges, align = [exact], None
    if vectors is not None:
        if thumbnails is None:
            raise ValueError("the embedding stage confirms its pairs geometrically: pass "
                             "thumbnails (row indices -> geometry.thumbnail) with vectors")
        align = aligner(thumbnails)
        near = near[:, ~(align(*near) < NOT_ALIGNED)]
        edges.append(embedding_pairs(hashes, vectors, thresholds, everywhere, align))
    edges.append(near)
    edges = np.concatenate(edges, axis=1).reshape(2, -1)
    labels = components(len(rows), *edges)
    pairs = member_pairs(labels)
    same = _same_picture(rows, digests, *pairs)
    compatible = same | hash_matches(*pairs, hashes, loose_bounds(thresholds, group_bits),
                                     everywhere)["match"].to_numpy()
    if align is not None:
        compatible[~compatible] = _aligned(pairs[0][~compatible], pairs[1][~compatible],
                                           vectors, align)
    order = keeper_keys(rows).assign(row=np.arange(len(rows))).sort_values(
        KEEPER_KEYS, ascending=KEEPER_ASCENDING, kind="stable")["row"].to_numpy()
    labels, splits = split_chains(labels, order, edges, pairs, compatible)
    groups = choose_keepers(rows, labels)
    out = _relation_to_keeper(groups, rows, hashes, thresholds, alignments, digests, vectors,
                              align)
    split_note = pd.Series(labels).map({
        label: f"cut from a chained group of {info['from_size']} into {info['pieces']} "
               f"pieces: not every two members alike (within {group_bits} bits, or found "
               f"in each other)"
        for label, info in splits.items()})
    out["dup_split"] = pd.Series(split_note.to_numpy(), dtype="string")
    return out


def _aligned(i: np.ndarray, j: np.ndarray, vectors: np.ndarray, align) -> np.ndarray:
    """Pairs of group members confirmed geometrically (only those close enough in embedding
    to be candidates at all are checked)."""
    close = pair_cosines(vectors, i, j) >= min(cosine for cosine, _ in CANDIDATE_TIERS)
    out = np.zeros(len(i), dtype=bool)
    out[close] = align(i[close], j[close]) >= MIN_ALIGNMENT
    return out


def embedding_match(i: np.ndarray, j: np.ndarray, hashes: dict[str, np.ndarray],
                    vectors: np.ndarray, thresholds: dict[str, int], alignments: dict,
                    align) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Whether each pair is an embedding candidate (cosine and every hash within a
    CANDIDATE_TIERS bound in some alignment) confirmed by the geometric check (align(i, j) >=
    MIN_ALIGNMENT); also the cosines, the alignment scores (NaN: not a candidate) and the hash
    relation at the widest bound (for dup_reason)."""
    cosine = pair_cosines(vectors, i, j)
    candidate = np.zeros(len(i), dtype=bool)
    for min_cosine, bits in sorted(CANDIDATE_TIERS, key=lambda tier: tier[1]):
        relation = hash_matches(i, j, hashes, loose_bounds(thresholds, bits), alignments)
        candidate |= (cosine >= min_cosine) & relation["match"].to_numpy()
    scores = np.full(len(i), np.nan)
    scores[candidate] = align(i[candidate], j[candidate])
    return candidate & (scores >= MIN_ALIGNMENT), cosine, scores, relation


def embedding_pairs(hashes: dict[str, np.ndarray], vectors: np.ndarray,
                    thresholds: dict[str, int], alignments: dict, align) -> np.ndarray:
    """Edges (2, k) of the embedding stage (see embedding_match). Searched from the hash side
    (pairs with every kind within the widest bound, then their cosines): the same pairs as a
    cosine search confirmed by hashes, without an n x n similarity matrix (12 s for 4,165
    images under load, against under 1 s)."""
    kind = next(iter(thresholds))
    widest = max(loose_bounds(thresholds, bits)[kind] for _, bits in CANDIDATE_TIERS)
    i, j = candidate_pairs(hashes, kind, widest, alignments)
    within = hash_matches(i, j, hashes, loose_bounds(thresholds, widest), alignments)["match"]
    i, j = i[within.to_numpy()], j[within.to_numpy()]
    match = embedding_match(i, j, hashes, vectors, thresholds, alignments, align)[0]
    return np.array([i[match], j[match]], dtype=np.int64).reshape(2, -1)


def _same_picture(rows: pd.DataFrame, digests: np.ndarray, i: np.ndarray,
                  j: np.ndarray) -> np.ndarray:
    """Pairs with the same bytes or the same decoded pixels."""
    sha = rows["sha256"].to_numpy(object)
    return (sha[i] == sha[j]) | ((digests[i] != None) & (digests[i] == digests[j]))  # noqa: E711


def _bits_text(relation: pd.DataFrame, kinds: list[str]) -> np.ndarray:
    """'phash 5, dhash 3 bits' per pair of a hash_matches table."""
    text = relation[f"bits_{kinds[0]}"].map(lambda b: f"{kinds[0]} {b}")
    for kind in kinds[1:]:
        text = text + relation[f"bits_{kind}"].map(lambda b, k=kind: f", {k} {b}")
    return (text + " bits").to_numpy(object)


def _relation_to_keeper(groups: pd.DataFrame, rows: pd.DataFrame, hashes: dict[str, np.ndarray],
                        thresholds: dict[str, int], alignments: dict, digests: np.ndarray,
                        vectors: np.ndarray | None, align) -> pd.DataFrame:
    """dup_of, dup_distance and dup_reason: how each copy matches its group's keeper, by the
    rule that decided it and its figures ('mirrored: phash 4, dhash 3 bits')."""
    kinds = list(thresholds)
    member = groups["dup_group"].notna().to_numpy()
    keeper_row = groups["keeper_row"].fillna(0).to_numpy(np.int64)
    every = np.arange(len(groups))
    rel = hash_matches(every, keeper_row, hashes, thresholds, alignments)
    sha = rows["sha256"].to_numpy(object)
    same_bytes = sha == sha[keeper_row]
    exact = _same_picture(rows, digests, every, keeper_row)
    reason = np.where(rel["match"], rel["alignment"].to_numpy(object) + ": "
                      + _bits_text(rel, kinds), None)
    linked = ~exact & ~rel["match"].to_numpy()
    at = np.flatnonzero(linked)
    if vectors is not None and len(at):
        match, cosine, scores, close = embedding_match(at, keeper_row[at], hashes, vectors,
                                                       thresholds, full_share(alignments), align)
        text = ("embedding: cosine " + pd.Series(cosine).map("{:.3f}".format) + ", aligned "
                + pd.Series(scores).map("{:.2f}".format) + ", ").to_numpy(object)
        reason[at[match]] = (text + _bits_text(close, kinds) + " "
                             + close["alignment"].to_numpy(object))[match]
        linked[at[match]] = False
    reason = np.where(linked, rel["alignment"].to_numpy(object) + ": " + _bits_text(rel, kinds)
                      + LINKED, reason)
    reason = np.where(exact, np.where(same_bytes, "exact: same bytes", "exact: same pixels"),
                      reason)
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
