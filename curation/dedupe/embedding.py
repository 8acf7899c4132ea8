"""Dedupe's embedding stage, pure: the cosine similarity of flip-invariant image embeddings and
the bounds that make a pair a duplicate with them (grouping.embedding_pairs applies them).

A copy that was mirrored AND cropped AND watermarked AND re-saved can drift too many bits
from its original in every hash alignment, while its embedding (image + mirror averaged, so
a flip changes nothing) stays close. Two different cars of one model photographed alike can
be as close in embedding space, so a pair close in embeddings and within a looser hash bound
is only a candidate: the geometric check (geometry.py) must find one picture in the other.
Arrays in, arrays out: the caller reads the vectors from whichever cache it has (see
curation/dedupe/step.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from curation.dedupe.geometry import alignment_scores
from curation.vocabulary import unit_rows

# Candidate pairs of the embedding stage: (cosine at least, every hash kind within this many
# bits in some alignment). Each candidate is then confirmed by the geometric check
# (geometry.py) scoring at least MIN_ALIGNMENT. Every two members of a group must be within
# GROUP_BITS in some alignment, or (with embeddings) be a confirmed pair themselves.
# Measured by bench/dedupe_bench.py on stanford-cars-25 and on indian-cars-7 (docs/dedupe.md).
CANDIDATE_TIERS = ((0.70, 12), (0.85, 20))
MIN_ALIGNMENT = 0.65
# With embeddings (so with thumbnails), a hash match scoring below this is not joined: on
# indian-cars-7 every near pair of different labels scores <= 0.47, on stanford-cars-25 the
# planted copies' near pairs >= 0.55.
NOT_ALIGNED = 0.5
GROUP_BITS = 12


def unit_vectors(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows in float32, which rows hold a vector): NaN rows (not embedded) are zeros."""
    vectors = np.asarray(vectors, dtype=np.float32)
    present = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
    unit = np.zeros_like(vectors)
    unit[present] = unit_rows(vectors[present], dtype=np.float32)
    return unit, present


def pair_cosines(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (i, j); NaN where either image has no embedding."""
    unit, present = unit_vectors(vectors)
    cosine = np.einsum("ij,ij->i", unit[i], unit[j])
    return np.where(present[i] & present[j], cosine, np.nan)


def aligner(thumbnails_of: Callable) -> Callable:
    """alignment_scores(i, j) for row pairs, decoding each row's thumbnail once:
    thumbnails_of(rows) -> one thumbnail per row (geometry.thumbnail's)."""
    made: dict[int, np.ndarray] = {}

    def scores(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        need = [int(r) for r in np.unique(np.concatenate([i, j])) if int(r) not in made]
        if need:
            made.update(zip(need, thumbnails_of(np.array(need, dtype=np.int64))))
        return alignment_scores(made, i, j)
    return scores
