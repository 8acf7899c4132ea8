"""Words and rules every step shares, defined once: split names, the keeper rule, which duplicate
group an image is in, the model folder, unit vectors and their distance to centres.
Imports no step."""
from __future__ import annotations

import numpy as np
import pandas as pd

# ---- split names ----------------------------------------------------------------------------
SPLITS = ("train", "val", "test")            # the `split` column's used values, in order
EXCLUDED = "excluded"                        # the `split` value of an image left out
UNUSED_SPLITS = (EXCLUDED,)
# folder name (lower case) -> the `given_split` value scan writes
GIVEN_SPLIT_NAMES = {"train": "train", "training": "train", "val": "validation",
                     "valid": "validation", "validation": "validation", "test": "test",
                     "testing": "test"}
GIVEN_TO_SPLIT = {"train": "train", "validation": "val", "val": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "validation", "test")
HELD_OUT = ("val", "validation", "test")     # splits a look-alike of a training image leaks into

MODEL_DIR = "model"                          # <workdir>/model: the trained classifier


def split_sort_key(name: str) -> tuple[int, str]:
    """train, val/validation, test first, then any other split name alphabetically."""
    return (SPLIT_ORDER.index(name), "") if name in SPLIT_ORDER else (len(SPLIT_ORDER), name)


# ---- the keeper rule ------------------------------------------------------------------------
KEEPER_KEYS = ["pixels", "bytes_per_pixel", "path"]
KEEPER_ASCENDING = [False, False, True]


def keeper_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the keeper rule sorts by: most pixels, then most bytes per pixel (least
    compressed), then the first path. Missing width/height/bytes count as 0."""
    def column(name):
        return (frame[name] if name in frame.columns else pd.Series(0, index=frame.index)
                ).astype("Float64").fillna(0).to_numpy(float)

    pixels = column("width") * column("height")
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pixel = np.where(pixels > 0, column("bytes") / np.where(pixels > 0, pixels, 1), 0.0)
    return pd.DataFrame({"pixels": pixels, "bytes_per_pixel": per_pixel,
                         "path": frame["path"].astype(str).to_numpy()}, index=frame.index)


# ---- which duplicate group an image is in ---------------------------------------------------
GROUP_COLUMN = "dup_group"


def exact_groups(sha256) -> pd.Series:
    """Group ids for files with identical bytes (null when a file's content is unique).

    The fallback grouping when `curate dedupe` has not run: only byte-identical copies are found.
    """
    digests = pd.Series(sha256, dtype="string").reset_index(drop=True)
    codes, uniques = pd.factorize(digests, sort=True)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    shared = (codes >= 0) & (counts[np.maximum(codes, 0)] > 1)
    return pd.Series(np.where(shared, codes, -1), dtype="Int64").replace(-1, pd.NA)


def manifest_groups(manifest: pd.DataFrame) -> tuple[pd.Series, bool]:
    """(group ids, whether they come from dedupe): dedupe's `dup_group`, else identical bytes.

    The one place that decides which duplicate groups split, check-leaks and the report use
    before and after `curate dedupe`; without `sha256` either, no image is grouped.
    """
    if GROUP_COLUMN in manifest.columns:
        return manifest[GROUP_COLUMN].astype("Int64").reset_index(drop=True), True
    if "sha256" in manifest.columns:
        return exact_groups(manifest["sha256"]), False
    return pd.Series(pd.NA, index=range(len(manifest)), dtype="Int64"), False


# ---- vectors --------------------------------------------------------------------------------
def unit_rows(vectors: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Rows scaled to unit L2 norm, computed in dtype (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def centre_distance(unit: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cosine distance of each unit row to its nearest unit centre (one (d,) centre or (m, d)):
    0 on a centre, 2 opposite. The one out-of-distribution distance: flag-noise's non-car and
    per-class outlier scores and predict's not-a-car guard measure it (each with its own cut)."""
    similarity = unit @ np.asarray(centres).T
    return 1.0 - (similarity if similarity.ndim == 1 else similarity.max(axis=1))
