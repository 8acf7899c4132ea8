"""Per-image perceptual hashes (pHash, dHash, wHash, aHash) of the image, its mirror, its inner crop.

The hashes are imagehash's definitions (64 bits, hash_size 8; tests check bit equality with
imagehash), computed from one small grayscale decode per image (JPEG draft). pHash, dHash and
aHash are done in numpy from the resized pixels; their mirror hashes come from the same pixels
(a flipped grid, or DCT sign flips for pHash), so a mirror costs almost nothing. The inner
crop (INNER_CROP off each border) lets a 2-7 % border-cropped copy match its original.
Hashes travel as uint64 arrays in memory and as 16-digit hex strings in the manifest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .images import ImageError, load_image
from .parallel import map_files

KINDS = ("phash", "dhash", "whash", "ahash")
DECODE_SIDE = 64      # long side of the decoded thumbnail every hash is computed from
INNER_CROP = 0.045    # the inner hashes see the picture less this share of each border
VARIANTS = ("", "_mirror", "_inner")
_LANCZOS = Image.Resampling.LANCZOS
_PHASH_GRID = 32      # imagehash.phash: hash_size 8 x highfreq_factor 4
_WHASH_SCALE = 64     # fixed, so a slightly cropped copy is not hashed at another wavelet scale


def _dct_rows(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the unnormalised DCT-II matrix (scipy.fftpack.dct's convention)."""
    k = np.arange(keep)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT = _dct_rows(_PHASH_GRID, 8)
_MIRROR_SIGNS = (-1.0) ** np.arange(8)   # a horizontal flip negates odd horizontal frequencies


def bits_to_int(bits: np.ndarray) -> int:
    """A boolean 8x8 grid as the integer whose hex is imagehash's str(hash) (row-major, MSB first)."""
    return int.from_bytes(np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes(), "big")


def _median_bits(values: np.ndarray) -> np.ndarray:
    return values > np.median(values)


def _phash(gray: Image.Image, box: tuple[float, ...], mirror: bool) -> list[np.ndarray]:
    pixels = np.asarray(gray.resize((_PHASH_GRID, _PHASH_GRID), _LANCZOS, box=box),
                        dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T
    return [_median_bits(low), *([_median_bits(low * _MIRROR_SIGNS)] if mirror else [])]


def _dhash(gray: Image.Image, box: tuple[float, ...], mirror: bool) -> list[np.ndarray]:
    pixels = np.asarray(gray.resize((9, 8), _LANCZOS, box=box))
    grids = [pixels, pixels[:, ::-1]] if mirror else [pixels]
    return [grid[:, 1:] > grid[:, :-1] for grid in grids]


def _ahash(gray: Image.Image, box: tuple[float, ...], mirror: bool) -> list[np.ndarray]:
    pixels = np.asarray(gray.resize((8, 8), _LANCZOS, box=box))
    bits = pixels > pixels.mean()
    return [bits, *([bits[:, ::-1]] if mirror else [])]


def _whash(gray: Image.Image, box: tuple[float, ...], mirror: bool) -> list[np.ndarray]:
    region = gray if box == (0, 0, *gray.size) else gray.crop(tuple(round(v) for v in box))
    images = [region, ImageOps.mirror(region)] if mirror else [region]
    return [imagehash.whash(image, image_scale=_WHASH_SCALE).hash for image in images]


_HASHERS = {"phash": _phash, "dhash": _dhash, "whash": _whash, "ahash": _ahash}


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
    """Manifest columns per kind: the hash, its mirror's, and its inner crop's, e.g.
    phash, phash_mirror, phash_inner."""
    return [f"{kind}{variant}" for kind in kinds for variant in VARIANTS]


def image_hashes(image: Image.Image, kinds: Sequence[str] = ("phash",)) -> dict[str, int]:
    """Every hash column of hash_columns(kinds) for one (already decoded) image."""
    gray = image.convert("L")
    width, height = gray.size
    inner = (width * INNER_CROP, height * INNER_CROP,
             width * (1 - INNER_CROP), height * (1 - INNER_CROP))
    out = {}
    for kind in kinds:
        plain, mirrored = _HASHERS[kind](gray, (0, 0, width, height), True)
        (cropped,) = _HASHERS[kind](gray, inner, False)
        for variant, bits in zip(VARIANTS, (plain, mirrored, cropped)):
            out[kind + variant] = bits_to_int(bits)
    return out


def hash_file(args: tuple[str, tuple[str, ...], int]) -> dict:
    """Hash one file (decoded small, JPEG draft); never raises for a bad file: {'error': reason}."""
    path, kinds, side = args
    try:
        image = load_image(Path(path), max_side=side)
    except ImageError as exc:
        return {"error": exc.reason}
    except OSError as exc:
        return {"error": f"unreadable: {exc.strerror or exc}"}
    return {column: f"{value:016x}" for column, value in image_hashes(image, kinds).items()}


def hash_files(paths: Sequence[str], kinds: Sequence[str], *, side: int = DECODE_SIDE,
               workers: int | None = None, quiet: bool = False) -> pd.DataFrame:
    """One row per path: the hash columns as hex strings (null when it failed) and `hash_error`."""
    kinds = tuple(kinds)
    rows = map_files(hash_file, [(str(p), kinds, side) for p in paths], workers=workers,
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
