"""Per-image perceptual hashes (pHash, dHash, wHash, aHash) of the image, its mirror, its inner crop.

The definitions are imagehash's (64 bits, hash_size 8, Lanczos resampling, bit layout). Every
picture is decoded once, small and luma only (images.load_gray), and Lanczos-resized by PIL to
imagehash's 32x32 pHash grid, so pHash is bit-for-bit imagehash.phash of that decode. Every
other grid (pHash's DCT block, the inner crop, dHash 9x8, aHash 8x8) is then a fixed pair of
matrix products on that square, in float: no per-size work and no uint8 rounding between passes,
so dHash and aHash differ from imagehash's by a bit or two at most on real photos (tests bound
it; docs/dedupe.md measures it). A mirror costs almost nothing (a flipped grid, or DCT sign flips
for pHash). The inner crop (INNER_CROP off each border, and its mirror) lets a 2-7 % border-
cropped copy match its original, mirrored or not. wHash calls imagehash itself. Hashes are
16-digit hex strings (imagehash's str(hash)) in the manifest and uint64 arrays in memory.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from curation.images import ImageError, load_gray, load_image
from curation.parallel import map_files

KINDS = ("phash", "dhash", "whash", "ahash")
# In dedupe's run record: hashes cached by another method are redone.
HASH_METHOD = "luma32-canvas32-mirror-inner"
DECODE_MIN_SIDE = 32  # JPEGs decode at the smallest DCT scale keeping both sides >= this
_CANVAS = 32          # every picture is first Lanczos-resized to this square: pHash's own grid
INNER_CROP = 0.045    # the inner hashes see the picture less this share of each border
VARIANTS = ("", "_mirror", "_inner", "_mirror_inner")
_GRIDS = {"phash": (_CANVAS, _CANVAS), "dhash": (9, 8), "ahash": (8, 8)}   # (width, height)
_LANCZOS_SUPPORT = 3.0
_WHASH_SCALE = 64     # fixed, so a slightly cropped copy is not hashed at another wavelet scale


def _dct_rows(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the unnormalised DCT-II matrix (scipy.fftpack.dct's convention)."""
    k = np.arange(keep)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT = _dct_rows(_CANVAS, 8)
_MIRROR_SIGNS = (-1.0) ** np.arange(8)   # a horizontal flip negates odd horizontal frequencies


def lanczos_weights(in_size: int, out_size: int, start: float, stop: float) -> np.ndarray:
    """(out_size, in_size) matrix resampling [start, stop) of an axis to out_size samples with
    PIL's Lanczos-3 filter (same centres and taps, support widened when shrinking, rows sum to 1)."""
    scale = (stop - start) / out_size
    stretch = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * stretch
    centres = (start + (np.arange(out_size) + 0.5) * scale)[:, None]
    x = np.arange(in_size)[None, :]
    taps = (x >= np.trunc(centres - support + 0.5)) & (x < np.trunc(centres + support + 0.5))
    t = (x - centres + 0.5) / stretch
    weights = np.sinc(t) * np.sinc(t / _LANCZOS_SUPPORT) * (taps & (np.abs(t) < _LANCZOS_SUPPORT))
    return weights / weights.sum(axis=1, keepdims=True)


@lru_cache(maxsize=8)
def _stacked_axis(kinds: tuple[str, ...], axis: int) -> tuple[np.ndarray, tuple]:
    """Each kind's plain and inner resampling matrices for one axis of the canvas (axis 0: rows,
    to the grids' heights; 1: columns, to their widths; pHash's taken on to its 8 low DCT
    frequencies), stacked, with the offsets where each block starts: rows @ canvas @ cols.T
    then holds every grid on its block diagonal."""
    crops = {False: (0.0, _CANVAS), True: (_CANVAS * INNER_CROP, _CANVAS * (1 - INNER_CROP))}
    matrices = []
    for kind in kinds:
        for inner in (False, True):
            weights = lanczos_weights(_CANVAS, _GRIDS[kind][1 - axis], *crops[inner])
            matrices.append(_DCT @ weights if kind == "phash" else weights)
    return np.vstack(matrices), tuple(np.cumsum([0, *(len(m) for m in matrices)]).tolist())


def _grids(canvas: np.ndarray, kinds: tuple[str, ...]) -> list[np.ndarray]:
    """[plain, inner] grid of each kind in turn, from one pair of matrix products."""
    rows, row_starts = _stacked_axis(kinds, 0)
    cols, col_starts = _stacked_axis(kinds, 1)
    product = rows @ canvas @ cols.T
    return [product[r0:r1, c0:c1] for r0, r1, c0, c1 in
            zip(row_starts, row_starts[1:], col_starts, col_starts[1:])]


def _above_median(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=None)
    middle = len(ordered) // 2
    return values > (ordered[middle - 1] + ordered[middle]) / 2


def _phash(grid: np.ndarray, mirror: bool) -> list[np.ndarray]:
    return [_above_median(grid), *([_above_median(grid * _MIRROR_SIGNS)] if mirror else [])]


def _dhash(grid: np.ndarray, mirror: bool) -> list[np.ndarray]:
    grids = [grid, grid[:, ::-1]] if mirror else [grid]
    return [g[:, 1:] > g[:, :-1] for g in grids]


def _ahash(grid: np.ndarray, mirror: bool) -> list[np.ndarray]:
    bits = grid > grid.mean()
    return [bits, *([bits[:, ::-1]] if mirror else [])]


def _whash(pixels: np.ndarray, inner: bool) -> list[np.ndarray]:
    if inner:
        height, width = pixels.shape
        pixels = pixels[round(height * INNER_CROP):round(height * (1 - INNER_CROP)),
                        round(width * INNER_CROP):round(width * (1 - INNER_CROP))]
    images = [Image.fromarray(p) for p in (pixels, pixels[:, ::-1].copy())]
    return [imagehash.whash(image, image_scale=_WHASH_SCALE).hash for image in images]


_GRID_BITS = {"phash": _phash, "dhash": _dhash, "ahash": _ahash}


def parse_kinds(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'phash,dhash' -> ('phash', 'dhash'), checked against KINDS; order kept, repeats dropped."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    kinds = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown hash {', '.join(unknown) or '(none given)'}: "
                         f"choose from {', '.join(KINDS)}")
    return kinds


def hash_columns(kinds: Sequence[str]) -> list[str]:
    """Manifest columns per kind: the hash, its mirror's, its inner crop's and its mirrored
    inner crop's, e.g. phash, phash_mirror, phash_inner, phash_mirror_inner."""
    return [f"{kind}{variant}" for kind in kinds for variant in VARIANTS]


def gray_hashes(pixels: np.ndarray, kinds: Sequence[str] = ("phash",)) -> dict[str, str]:
    """Every hash column of hash_columns(kinds) for one upright grayscale array, as 16-digit hex
    (imagehash's str(hash) layout: row-major bits, most significant first)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    grid_kinds = tuple(kind for kind in kinds if kind in _GRIDS)
    grids = iter(_grids(_canvas(pixels), grid_kinds) if grid_kinds else [])
    bits: list[np.ndarray] = []
    for kind in kinds:
        if kind == "whash":
            bits += _whash(pixels, inner=False) + _whash(pixels, inner=True)
        else:
            plain, inner = next(grids), next(grids)
            bits += _GRID_BITS[kind](plain, True) + _GRID_BITS[kind](inner, True)
    packed = np.packbits(np.reshape(bits, (len(bits), 64)), axis=1).tobytes().hex()
    return {column: packed[16 * k:16 * (k + 1)] for k, column in enumerate(hash_columns(kinds))}


def _canvas(pixels: np.ndarray) -> np.ndarray:
    """imagehash's pHash grid: the pixels Lanczos-resized to 32x32 by PIL (in C), as float.
    Every other grid is a fixed matrix product of it, whatever the photo's size."""
    square = Image.fromarray(pixels).resize((_CANVAS, _CANVAS), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.float64)


def image_hashes(image: Image.Image, kinds: Sequence[str] = ("phash",)) -> dict[str, str]:
    """gray_hashes of an already decoded PIL image (any mode, converted to 8-bit grayscale)."""
    return gray_hashes(np.asarray(image.convert("L")), kinds)


def hash_file(args: tuple[str, tuple[str, ...]]) -> dict:
    """Hash one file (decoded small, luma only); never raises for a bad file: {'error': reason}."""
    path, kinds = args
    try:
        pixels = load_gray(path, min_side=DECODE_MIN_SIDE)
    except ImageError as exc:
        return {"error": exc.reason}
    except OSError as exc:
        return {"error": f"unreadable: {exc.strerror or exc}"}
    return gray_hashes(pixels, kinds)


def hash_files(paths: Sequence[str], kinds: Sequence[str], *, workers: int | None = None,
               quiet: bool = False) -> pd.DataFrame:
    """One row per path: the hash columns as hex strings (null when it failed) and `hash_error`."""
    kinds = tuple(kinds)
    rows = map_files(hash_file, [(str(p), kinds) for p in paths], workers=workers,
                     desc="hash", quiet=quiet)
    frame = pd.DataFrame(rows, columns=[*hash_columns(kinds), "error"]).astype("string")
    return frame.rename(columns={"error": "hash_error"})


def pixel_digest(path: str) -> str | None:
    """sha256 of the fully decoded, upright RGB pixels and size: equal for the same picture saved
    in another encoding (PNG vs lossless re-save) or with other metadata; None when unreadable."""
    try:
        image = load_image(Path(path))
    except (ImageError, OSError):
        return None
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def pixel_digests(paths: Sequence[str], *, workers: int | None = None,
                  quiet: bool = False) -> list[str | None]:
    """pixel_digest over many files in worker processes."""
    return map_files(pixel_digest, [str(p) for p in paths], workers=workers,
                     desc="pixels", quiet=quiet)


def to_uint64(values: Sequence[str] | pd.Series) -> np.ndarray:
    """Hex strings (as stored in the manifest) -> uint64 array; nulls are not allowed here."""
    return np.array([int(v, 16) for v in values], dtype=np.uint64)
