"""Dedupe's embedding stage, pure: the cosine similarity of flip-invariant image embeddings and
the bounds that make a pair a duplicate with them (grouping.embedding_pairs applies them).

A copy that was mirrored AND cropped AND watermarked AND re-saved can drift too many bits
from its original in every hash alignment, while its embedding (image + mirror averaged, so
a flip changes nothing) stays close. Two different cars of one model photographed alike can
be as close in embedding space, so an embedding pair is only kept when some hash alignment
also agrees within a looser bound. Arrays in, arrays out: the caller reads the vectors from
whichever cache it has (see curation/dedupe/step.py).
"""
from __future__ import annotations

import numpy as np

from curation.vocabulary import unit_rows

# Cosine similarity from which two images are an embedding candidate, the looser bound (bits,
# every hash kind, in one alignment) that confirms one, and the bound every two members of a
# group must keep. Measured by bench/dedupe_bench.py on stanford-cars-25 (docs/dedupe.md).
MIN_COSINE = 0.85
CONFIRM_BITS = 12
GROUP_BITS = 12
EMBEDDED_GROUP_BITS, EMBEDDED_GROUP_COSINE = 16, 0.90   # with embeddings: also alike enough


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
