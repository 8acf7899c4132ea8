"""A geometric check for candidate duplicate pairs: is one picture the other, cropped, scaled
or mirrored, detail for detail?

Embeddings and hashes both summarise a picture, and two different cars of one model in one
pose (catalogue renders on white) summarise alike. Here the centre of one picture's small
high-passed grayscale thumbnail is slid over the other's at several relative widths and
heights (crops of up to ~15 % a side), mirrored or not, and the best normalized
cross-correlation is the pair's score. High-passing keeps the details (grille, wheels, badges,
reflections) and drops the silhouette on white that different cars share: on indian-cars-7
different-label candidate pairs score at most 0.63, the planted edited copies of
stanford-cars-25 0.73 or more in 99 % of pairs (docs/dedupe.md). Brightness and contrast
drop out of the correlation; a watermark or re-compression costs a little. Only candidate
pairs are checked (OpenCV's template matching, milliseconds a pair).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from curation.images import ImageError, load_gray
from curation.parallel import map_files

THUMB_SIDE = 64          # thumbnails are the whole frame resized to THUMB_SIDE x THUMB_SIDE
BLUR_SIGMA = 2.0         # the high-pass removes a Gaussian blur of this sigma (pixels)
MARGIN = 0.1             # the slid centre leaves out this share of each side
RELATIVE_SIZES = (1.0, 0.93, 0.86)   # the centre's width/height relative to the other picture


def thumbnail(path: str) -> np.ndarray:
    """The upright grayscale picture, whole frame, resized to THUMB_SIDE squared and
    high-passed (float32); NaN when it cannot be decoded."""
    try:
        gray = load_gray(path, min_side=THUMB_SIDE)
    except (ImageError, OSError):
        return np.full((THUMB_SIDE, THUMB_SIDE), np.nan, np.float32)
    return high_pass(small(gray))


def small(picture: np.ndarray) -> np.ndarray:
    """The whole frame resized to THUMB_SIDE squared (area-averaged, dtype kept): the thumbnail
    before its high-pass, 4 KB as uint8 grayscale (what the catalogue index stores)."""
    return cv2.resize(picture, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)


def thumbnails(paths: Sequence[str], *, workers: int | None = None,
               quiet: bool = True) -> list[np.ndarray]:
    """thumbnail over many files in worker processes."""
    return map_files(thumbnail, [str(p) for p in paths], workers=workers, desc="thumbnails",
                     quiet=quiet)


def high_pass(picture: np.ndarray) -> np.ndarray:
    """The picture less its blur: detail only, the same for any brightness offset."""
    picture = picture.astype(np.float32)
    return picture - cv2.GaussianBlur(picture, (0, 0), BLUR_SIGMA)


def templates(picture: np.ndarray) -> list[np.ndarray]:
    """The centre of a thumbnail, as is and mirrored, at every relative width and height: what
    is slid over the other picture of a pair (made once per image)."""
    side = picture.shape[0]
    cut = int(round(side * MARGIN))
    centre = picture[cut:side - cut, cut:side - cut]
    out = []
    for view in (centre, np.ascontiguousarray(centre[:, ::-1])):
        for height in RELATIVE_SIZES:
            for width in RELATIVE_SIZES:
                size = (round(view.shape[1] * width), round(view.shape[0] * height))
                out.append(cv2.resize(view, size, interpolation=cv2.INTER_AREA))
    return out


def best_match(whole: np.ndarray, parts: list[np.ndarray]) -> float:
    """Best normalized cross-correlation of any of `parts` anywhere in `whole`."""
    return max(float(cv2.minMaxLoc(cv2.matchTemplate(whole, part, cv2.TM_CCOEFF_NORMED))[1])
               for part in parts)


def usable(picture: np.ndarray) -> bool:
    """A thumbnail that can be aligned: decoded, and not flat."""
    return not np.isnan(picture).any() and float(picture.std()) > 0.1


def alignment_scores(thumbnails: dict[int, np.ndarray], i: Sequence[int],
                     j: Sequence[int]) -> np.ndarray:
    """How well one picture of each pair (i, j) of rows is a crop/scale/mirror of the other:
    the best normalized cross-correlation (-1..1) either way round; NaN when either thumbnail
    is missing or flat. thumbnails: row -> thumbnail (as `thumbnail` makes them)."""
    made: dict[int, list[np.ndarray]] = {}
    out = np.full(len(i), np.nan)
    for k, (a, b) in enumerate(zip(i, j)):
        if not (usable(thumbnails[a]) and usable(thumbnails[b])):
            continue
        for row in (a, b):
            if row not in made:
                made[row] = templates(thumbnails[row])
        out[k] = max(best_match(thumbnails[a], made[b]), best_match(thumbnails[b], made[a]))
    return out
