"""Splitting chained groups: a duplicate group must be one picture, not a walk across pictures.

Connected components of duplicate pairs can chain: A is like B, B like C, ..., and the two
ends are different cars (catalogue renders of several models in one pose on white). A group
is kept whole only when every two of its members are within a looser bound; otherwise it is
cut, greedily from the best keeper, into pieces that are joined through confirmed pairs and
pairwise within the bound. Pure: label arrays and pair arrays in, label arrays out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def member_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows that share a label >= 0 (within-group pairs)."""
    rows = np.flatnonzero(labels >= 0)
    rows = rows[np.argsort(labels[rows], kind="stable")]
    _, starts, counts = np.unique(labels[rows], return_index=True, return_counts=True)
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, count in zip(starts, counts):
        a, b = np.triu_indices(count, k=1)
        members = rows[start:start + count]
        firsts.append(np.minimum(members[a], members[b]))
        seconds.append(np.maximum(members[a], members[b]))
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def split_chains(labels: np.ndarray, order: np.ndarray, edges: np.ndarray,
                 pairs: tuple[np.ndarray, np.ndarray], compatible: np.ndarray
                 ) -> tuple[np.ndarray, dict[int, dict]]:
    """Cut groups whose members are not all pairwise compatible.

    labels: group per row (-1: none); order: rows in keeper preference (best first); edges:
    (2, k) confirmed duplicate pairs; pairs + compatible: every within-group pair (as
    member_pairs) and whether it is within the looser bound. Returns new labels (pieces of
    one row get -1) and, per split piece's new label, {"from_size": size of the chained
    group, "pieces": how many pieces it was cut into}.
    """
    i, j = pairs
    bad = pd.Series(~compatible).groupby(labels[i]).any() if len(i) else pd.Series(dtype=bool)
    chained = set(bad[bad].index.tolist())
    out = labels.copy()
    report: dict[int, dict] = {}
    if not chained:
        return out, report
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(order))
    next_label = int(labels.max()) + 1
    for label in sorted(chained):
        members = np.flatnonzero(labels == label)
        pieces = _greedy_pieces(members[np.argsort(rank[members])], edges, pairs, compatible)
        for piece in pieces:
            out[piece] = next_label if len(piece) > 1 else -1
            if len(piece) > 1:
                report[next_label] = {"from_size": len(members), "pieces": len(pieces)}
                next_label += 1
    return out, report


def _greedy_pieces(members: np.ndarray, edges: np.ndarray, pairs, compatible) -> list[list[int]]:
    """Pieces of one chained group: from the best remaining member, take in (best first, until
    none is left to take) each member joined to the piece by a confirmed pair and compatible
    with everyone already in it. members: rows in preference order."""
    k = len(members)
    position = pd.Series(np.arange(k), index=members)
    ok = np.eye(k, dtype=bool)
    i, j = pairs
    inside = np.isin(i, members) & np.isin(j, members) & compatible
    a, b = position[i[inside]].to_numpy(), position[j[inside]].to_numpy()
    ok[a, b] = ok[b, a] = True
    joined = np.zeros((k, k), dtype=bool)
    inside = np.isin(edges[0], members) & np.isin(edges[1], members)
    a, b = position[edges[0][inside]].to_numpy(), position[edges[1][inside]].to_numpy()
    joined[a, b] = joined[b, a] = True
    left, pieces = np.ones(k, dtype=bool), []
    while left.any():
        piece = np.zeros(k, dtype=bool)
        piece[np.argmax(left)] = True
        grew = True
        while grew:
            grew = False
            for m in np.flatnonzero(left & ~piece & joined[piece].any(axis=0)):
                if ok[m, piece].all():
                    piece[m] = grew = True
        pieces.append(members[piece].tolist())
        left &= ~piece
    return pieces
