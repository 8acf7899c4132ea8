"""The Hamming search against a brute-force reference, for both engines and both modes."""
from __future__ import annotations

import numpy as np
import pytest

from curation.dedupe.hamming import choose_method, distances, flip_masks, mih_plan, pairs_within


def reference(hashes: np.ndarray, radius: int, queries: np.ndarray | None = None) -> set:
    """Every pair by a full distance matrix (the obvious, slow way)."""
    q = hashes if queries is None else queries
    d = np.array([[bin(int(a) ^ int(b)).count("1") for b in hashes] for a in q])
    i, j = np.nonzero(d <= radius)
    keep = j > i if queries is None else np.ones(len(i), dtype=bool)
    return set(zip(i[keep].tolist(), j[keep].tolist()))


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hashes in tight clusters (like real near-duplicates), so every radius has pairs."""
    centers = rng.integers(0, 2**64 - 1, size=max(1, n // 8), dtype=np.uint64, endpoint=True)
    hashes = centers[rng.integers(0, len(centers), n)]
    for _ in range(4):
        hashes ^= np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
    return hashes


@pytest.mark.parametrize("method", ["brute", "mih"])
@pytest.mark.parametrize("radius", [0, 1, 4, 10, 17, 64])
def test_self_search_matches_brute_force(method, radius):
    rng = np.random.default_rng(radius)
    hashes = np.concatenate([clustered(rng, 150),
                             rng.integers(0, 2**64 - 1, size=50, dtype=np.uint64, endpoint=True)])
    i, j, d = pairs_within(hashes, radius, method=method)
    assert set(zip(i.tolist(), j.tolist())) == reference(hashes, radius)
    assert np.array_equal(d, distances(hashes[i], hashes[j]))
    assert (i < j).all()


@pytest.mark.parametrize("method", ["brute", "mih"])
def test_query_search_matches_brute_force(method):
    rng = np.random.default_rng(7)
    hashes = clustered(rng, 120)
    queries = hashes[rng.integers(0, 120, 60)] ^ (np.uint64(1) << np.uint64(5))
    i, j, d = pairs_within(hashes, 6, queries=queries, method=method)
    assert set(zip(i.tolist(), j.tolist())) == reference(hashes, 6, queries)
    assert (d <= 6).all()


def test_mih_finds_planted_pairs_among_many_random_hashes():
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**64 - 1, size=20_000, dtype=np.uint64, endpoint=True)
    flips = np.zeros(200, dtype=np.uint64)
    for k in range(200):   # partner k differs from hash k in exactly k % 11 bits
        for bit in rng.choice(64, k % 11, replace=False):
            flips[k] |= np.uint64(1) << np.uint64(bit)
    hashes[10_000:10_200] = hashes[:200] ^ flips
    i, j, d = pairs_within(hashes, 10, method="mih")
    found = set(zip(i.tolist(), j.tolist()))
    assert all((k, 10_000 + k) in found for k in range(200))
    assert choose_method(len(hashes), len(hashes), 10, True) == "mih"


def test_plan_covers_radius_by_pigeonhole():
    for radius in (0, 3, 10, 20):
        _, chunks = mih_plan(1_000_000, 1_000_000, radius, True)
        assert sum(c.bits for c in chunks) == 64
        assert sum(c.flips + 1 for c in chunks) >= radius + 1


def test_flip_masks_count_and_weight():
    masks = flip_masks(6, 2)
    assert len(masks) == 1 + 6 + 15 and masks[0] == 0
    assert max(bin(int(m)).count("1") for m in masks) == 2


def test_empty_and_invalid_inputs():
    empty = np.empty(0, dtype=np.uint64)
    assert all(len(a) == 0 for a in pairs_within(empty, 5))
    with pytest.raises(ValueError, match="radius"):
        pairs_within(empty, 65)
    with pytest.raises(ValueError, match="method"):
        pairs_within(empty, 3, method="kd-tree")


def _search_peak(hashes: np.ndarray, radius: int, method: str, max_pairs: int):
    import tracemalloc

    tracemalloc.start()   # numpy reports its buffers to tracemalloc
    try:
        found = pairs_within(hashes, radius, method=method, max_pairs=max_pairs)
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["brute", "mih"])
def test_search_memory_is_bounded_by_max_pairs_not_by_n_squared(method):
    """The same pairs whatever the block; a small block keeps the peak near the arrays of
    length n (here 20,000 hashes: 2e8 pairs, 200,000 per block)."""
    rng = np.random.default_rng(3)
    hashes = np.full(20_000, np.uint64(0x0F0F0F0F0F0F0F0F))   # one crowd: many candidates
    for bit in rng.integers(0, 64, (20_000, 8)).T:
        hashes ^= np.uint64(1) << bit.astype(np.uint64)
    small, small_peak = _search_peak(hashes, 3, method, 200_000)
    large, large_peak = _search_peak(hashes, 3, method, 1 << 23)
    for a, b in zip(small, large):
        np.testing.assert_array_equal(a, b)
    assert len(small[0]) > 100
    assert small_peak < 200_000 * 64 + 20_000 * 200 < large_peak
