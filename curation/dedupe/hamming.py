"""All pairs of 64-bit hashes within a Hamming radius, exactly, with no Python loop over pairs.

Two engines, picked by a cost estimate (`method="auto"`):
- `brute`: vectorised popcount of every pair, in blocks; best for a few thousand hashes.
- `mih`: multi-index hashing. The 64 bits are cut into m chunks and chunk c is probed with every
  flip pattern of up to s_c bits, where sum(s_c + 1) = radius + 1. By the pigeonhole principle
  two hashes within the radius agree on some chunk up to its s_c flips, so probing finds every
  pair (no approximation). Probing is a join of sorted chunk buckets, verified by popcount.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb

import numpy as np

BITS = 64
METHODS = ("auto", "brute", "mih")
MAX_PAIRS = 1 << 23         # default pairs examined per numpy block (bounds working memory)
BYTES_PER_PAIR = 64         # working memory per examined pair (measured with tracemalloc, rounded up)
# Measured cost per unit on this machine (seconds); only their ratios matter for the choice.
_COST_BRUTE_PAIR = 3e-9     # one pair in the blockwise popcount
_COST_CANDIDATE = 8e-9      # one candidate pair expanded and verified by mih
_COST_SCAN = 3e-8           # one query looked up for one flip mask
_COST_MASK = 2e-4           # fixed numpy overhead per flip mask
_COST_SLOT = 5e-9           # one bucket of a chunk's lookup table
_MAX_CHUNK_BITS = 24        # lookup tables stay under 2**24 buckets


@dataclass(frozen=True)
class Chunk:
    """Bits [shift, shift + bits) of the hash, probed with up to `flips` flipped bits (-1: not probed)."""

    shift: int
    bits: int
    flips: int


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance between two uint64 arrays."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64))


def pairs_within(hashes: np.ndarray, radius: int, *, queries: np.ndarray | None = None,
                 method: str = "auto", max_pairs: int = MAX_PAIRS
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair within `radius` bits, as arrays (i, j, distance) sorted by (i, j).

    hashes: uint64 array (n,). Without queries: pairs i < j among hashes. With queries
    (uint64 array (q,)): every (query i, hash j) pair, i == j included. Pairs are examined in
    blocks of at most max_pairs (about BYTES_PER_PAIR bytes each), so the working memory is
    bounded by it plus arrays of the hashes' length and the pairs found, never by n * q.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    query_hashes = hashes if queries is None else np.ascontiguousarray(queries, dtype=np.uint64)
    if not 0 <= radius <= BITS:
        raise ValueError(f"radius must be between 0 and {BITS}, got {radius}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        method = choose_method(len(query_hashes), len(hashes), radius, queries is None)
    if method == "brute":
        i, j = _brute(hashes, query_hashes, radius, queries is None, max_pairs)
    else:
        plan = mih_plan(len(query_hashes), len(hashes), radius, queries is None)[1]
        i, j = _mih(hashes, query_hashes, radius, plan, queries is None, max_pairs)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    return i, j, distances(query_hashes[i], hashes[j]).astype(np.int64)


def _brute_cost(n_queries: int, n_base: int, self_join: bool) -> float:
    return n_queries * n_base * (0.5 if self_join else 1.0) * _COST_BRUTE_PAIR


def choose_method(n_queries: int, n_base: int, radius: int, self_join: bool) -> str:
    """'brute' or 'mih', whichever the cost estimate says is faster."""
    mih_cost = mih_plan(n_queries, n_base, radius, self_join)[0]
    return "mih" if mih_cost < _brute_cost(n_queries, n_base, self_join) else "brute"


def mih_plan(n_queries: int, n_base: int, radius: int, self_join: bool) -> tuple[float, list[Chunk]]:
    """The chunking with the lowest estimated cost, and that cost in seconds."""
    share = 0.5 if self_join else 1.0
    best: tuple[float, list[Chunk]] | None = None
    for m in range(-(-BITS // _MAX_CHUNK_BITS), 17):
        widths = [BITS // m + (1 if c < BITS % m else 0) for c in range(m)]
        whole, extra = divmod(radius + 1, m)
        chunks, shift, cost = [], 0, 0.0
        for c, width in enumerate(widths):
            flips = whole - 1 + (1 if c < extra else 0)
            chunks.append(Chunk(shift, width, flips))
            shift += width
            if flips >= 0:
                masks = sum(comb(width, k) for k in range(flips + 1))
                candidates = n_queries * n_base * share / 2.0 ** width
                per_mask = _COST_MASK + _COST_SCAN * n_queries * share + _COST_CANDIDATE * candidates
                cost += _COST_SLOT * 2 ** width + masks * per_mask
        if best is None or cost < best[0]:
            best = (cost, chunks)
    return best


def _brute(hashes: np.ndarray, queries: np.ndarray, radius: int, self_join: bool,
           max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise popcount of all pairs (upper triangle only for a self join)."""
    block = max(1, max_pairs // max(1, len(hashes)))
    found_i, found_j = [], []
    for lo in range(0, len(queries), block):
        first = lo if self_join else 0
        d = np.bitwise_count(queries[lo:lo + block, None] ^ hashes[None, first:])
        rows, cols = np.nonzero(d <= radius)
        i, j = rows + lo, cols + first
        keep = j > i if self_join else slice(None)
        found_i.append(i[keep])
        found_j.append(j[keep])
    return _concat(found_i), _concat(found_j)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every `bits`-bit pattern with at most `flips` bits set, 0 first."""
    masks = [sum(1 << b for b in combo) for k in range(flips + 1)
             for combo in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.int64)


def _chunk_keys(hashes: np.ndarray, chunk: Chunk) -> np.ndarray:
    mask = np.uint64((1 << chunk.bits) - 1)
    return ((hashes >> np.uint64(chunk.shift)) & mask).astype(np.int64)


def _mih(hashes: np.ndarray, queries: np.ndarray, radius: int, plan: list[Chunk],
         self_join: bool, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Union over chunks and flip masks of bucket joins, each verified by popcount."""
    found_i, found_j = [], []
    for chunk in (c for c in plan if c.flips >= 0):
        keys = _chunk_keys(hashes, chunk)
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_hashes = keys[order], hashes[order]
        counts = np.bincount(sorted_keys, minlength=1 << chunk.bits)
        starts = np.cumsum(counts) - counts
        if self_join:   # queries are the hashes in bucket order; pairs found once each
            query_keys, query_hashes, query_ids = sorted_keys, sorted_hashes, order
            halves: dict[int, np.ndarray] = {}
        else:
            query_keys, query_hashes = _chunk_keys(queries, chunk), queries
            query_ids = np.arange(len(queries))
        for mask in flip_masks(chunk.bits, chunk.flips):
            if self_join and mask == 0:    # later members of the same bucket
                selected = np.arange(len(sorted_keys))
                begin = selected + 1
                count = starts[sorted_keys] + counts[sorted_keys] - begin
            else:
                if self_join:              # bucket v meets bucket v ^ mask from the side with bit 0
                    top = int(mask).bit_length() - 1
                    if top not in halves:
                        halves[top] = np.flatnonzero(((query_keys >> top) & 1) == 0)
                    selected = halves[top]
                else:
                    selected = query_ids
                partner = query_keys[selected] ^ mask
                begin, count = starts[partner], counts[partner]
            q, base = _verify(query_hashes[selected], begin, count, sorted_hashes, radius,
                              max_pairs)
            found_i.append(query_ids[selected[q]])
            found_j.append(order[base])
    i, j = _concat(found_i), _concat(found_j)
    if self_join:
        i, j = np.minimum(i, j), np.maximum(i, j)
    codes = np.unique(i * len(hashes) + j)
    return codes // len(hashes), codes % len(hashes)


def _verify(query_hashes: np.ndarray, begin: np.ndarray, count: np.ndarray,
            base_hashes: np.ndarray, radius: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Query k against base positions begin[k] .. begin[k] + count[k] - 1: the pairs within radius."""
    total = int(count.sum())
    found_q, found_base = [], []
    cuts = np.searchsorted(np.cumsum(count), np.arange(1, -(-total // max_pairs)) * max_pairs,
                           side="right")   # batches of about max_pairs pairs, skewed buckets too
    bounds = np.unique(np.concatenate([[0], cuts, [len(count)]])).astype(np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = count[lo:hi]
        size = int(part.sum())
        if size == 0:
            continue
        offsets = np.cumsum(part) - part
        expanded = np.repeat(query_hashes[lo:hi], part)
        position = np.repeat(begin[lo:hi] - offsets, part) + np.arange(size)
        hits = np.flatnonzero(np.bitwise_count(base_hashes[position] ^ expanded) <= radius)
        found_q.append(np.searchsorted(offsets, hits, side="right") - 1 + lo)
        found_base.append(position[hits])
    return _concat(found_q), _concat(found_base)
