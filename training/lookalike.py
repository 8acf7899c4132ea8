"""The catalogue lookup's last stage: edited copies whose hashes drifted past dedupe's
thresholds (cropped unevenly, mirrored and re-saved, scaled down hard), confirmed picture
against picture.

Each catalogue photo keeps a grayscale thumbnail (dedupe's geometry.small: 64x64, 4 KB) and a
colour signature. An upload no hash rule matched is compared with its CANDIDATES nearest
catalogue photos within LOOSE_BITS (first hash kind, any alignment) by dedupe's geometric
check (geometry.py: the upload's high-passed thumbnail, its centre scaled and mirrored, slid
over the catalogue photo's); it re-uses the best one that scores at least MIN_ALIGNED and whose colours
agree. The colour check is needed because catalogue renders of one car in two paints align as
well as an edited copy does (swift-wagonr: a grey Swift render cropped by 3-5 % scores 0.87
against the red one); their colour signatures differ in 32-54 % of the pixels, an edited
copy's in at most 17 % (docs/check.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from curation.dedupe.geometry import (THUMB_SIDE, best_match, high_pass, small, templates,
                                      usable)
from curation.images import ImageError, load_array
from curation.parallel import map_files

# Candidates: the CANDIDATES catalogue photos nearest an upload within LOOSE_BITS of the first
# hash kind. Measured on the planted copies the hashes miss: the right photo is the nearest or
# the second nearest, within 16 bits (docs/check.md).
LOOSE_BITS = 20
CANDIDATES = 2
# Confirmed when aligned >= MIN_ALIGNED and the colour signatures differ in at most
# MAX_COLOUR_SHIFT of the pixels. Edited copies the hashes miss align at 0.77-1.00 (three
# swift-wagonr crops and one stanford-cars-25 crop below 0.80); another swift-wagonr catalogue
# photo at most 0.77 once the colours agree (a white WagonR rendered twice), fresh test photos
# at most 0.64 (docs/check.md).
MIN_ALIGNED = 0.80
MAX_COLOUR_SHIFT = 0.2
# Colour signature: the share of pixels in each hue (HUE_BINS) x saturation (two bands split at
# VIVID) bin; pixels less saturated than MIN_SATURATION or darker than MIN_VALUE count as one
# colourless bin. Hue and saturation do not change when a copy is brightened or darkened.
HUE_BINS = 12
MIN_SATURATION, VIVID, MIN_VALUE = 64, 150, 40
SIGNATURE_BINS = 1 + 2 * HUE_BINS
DECODE_SIDE = 224    # catalogue photos are decoded as uploads are for the model (load_array)


def colour_signature(rgb: np.ndarray) -> np.ndarray:
    """Share of the pixels of an RGB uint8 picture in each colour bin (float32, sums to 1)."""
    hsv = cv2.cvtColor(small(rgb), cv2.COLOR_RGB2HSV).astype(np.int64)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
    bins = np.where(coloured, 1 + (hue * HUE_BINS // 180) * 2 + (saturation >= VIVID), 0)
    return (np.bincount(bins.ravel(), minlength=SIGNATURE_BINS) / bins.size).astype(np.float32)


def colour_shift(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels that would have to change colour bin to turn one signature into the
    other (0: same colours, 1: none in common)."""
    return 0.5 * float(np.abs(a - b).sum())


def picture(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grayscale thumbnail uint8, colour signature) of an upright RGB uint8 array: an upload's
    from the pixels decoded for the model, a catalogue photo's from the same decode."""
    return small(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), colour_signature(rgb)


def _picture_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """picture of a file; an all-black thumbnail (flat: it confirms nothing) when unreadable."""
    try:
        return picture(load_array(path, DECODE_SIDE))
    except (ImageError, OSError):
        return (np.zeros((THUMB_SIDE, THUMB_SIDE), np.uint8),
                np.zeros(SIGNATURE_BINS, np.float32))


def catalogue_pictures(paths: Sequence[str], root: Path, *, workers: int | None = None,
                       quiet: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails (n, 64, 64) uint8 and colour signatures (n, bins) of catalogue photos, decoded
    in worker processes (paths relative to root)."""
    made = map_files(_picture_file, [str(Path(root) / p) for p in paths], workers=workers,
                     desc="catalogue thumbnails", quiet=quiet)
    if not made:
        return (np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8),
                np.zeros((0, SIGNATURE_BINS), np.float32))
    return np.stack([t for t, _ in made]), np.stack([c for _, c in made])


def nearest(query: np.ndarray, base: np.ndarray, gap: np.ndarray,
            count: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `count` nearest base rows of each query among candidate pairs (query, base, gap),
    nearest first."""
    order = np.lexsort((base, gap, query))
    query, base, gap = query[order], base[order], gap[order]
    rank = np.arange(len(query)) - np.searchsorted(query, query)
    keep = rank < count
    return query[keep], base[keep], gap[keep]


def aligned(thumbs: Sequence[np.ndarray], catalogue_thumbs: np.ndarray, query: np.ndarray,
            base: np.ndarray) -> np.ndarray:
    """How well each upload is found in its catalogue photo (-1..1; NaN when a thumbnail is
    flat): the upload's centre, as is and mirrored, at 1.0/0.93/0.86 of each side
    (geometry.templates), slid over the photo's thumbnail (geometry.best_match). That is one
    way round of dedupe's alignment_scores: it finds an upload that is the photo cropped,
    scaled or mirrored, at half the cost of both (an upload showing more than the catalogue
    photo is not sought). thumbs are the uploads' (picture's first), indexed by query; base
    indexes the catalogue's."""
    parts: dict[int, list[np.ndarray] | None] = {}
    for q in np.unique(query):
        upload = high_pass(thumbs[q])
        parts[int(q)] = templates(upload) if usable(upload) else None
    out = np.full(len(query), np.nan)
    for k, (q, b) in enumerate(zip(query, base)):
        photo = high_pass(catalogue_thumbs[b])
        if parts[int(q)] is not None and usable(photo):
            out[k] = best_match(photo, parts[int(q)])
    return out


def colours_agree(signatures: Sequence[np.ndarray], catalogue_signatures: np.ndarray,
                  query: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Whether each pair's colour signatures differ in at most MAX_COLOUR_SHIFT of the pixels
    (a photo that could not be decoded has an empty signature, which agrees with anything)."""
    return np.array([colour_shift(signatures[q], catalogue_signatures[b]) <= MAX_COLOUR_SHIFT
                     or not (signatures[q].any() and catalogue_signatures[b].any())
                     for q, b in zip(query, base)], dtype=bool)


def confirm(thumbs: Sequence[np.ndarray], signatures: Sequence[np.ndarray],
            catalogue_thumbs: np.ndarray, catalogue_signatures: np.ndarray,
            query: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Alignment score of each (upload, catalogue photo) pair whose colours agree, NaN for the
    others: thumbs/signatures are the uploads' (picture), indexed by query."""
    agree = colours_agree(signatures, catalogue_signatures, query, base)
    scores = np.full(len(query), np.nan)
    scores[agree] = aligned(thumbs, catalogue_thumbs, query[agree], base[agree])
    return scores
