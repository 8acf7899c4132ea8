"""Planted duplicates and pair precision/recall: how bench/dedupe_bench.py and the tests measure dedupe.

A planted copy is an original photo after one edit that listing sites make (resize, JPEG
re-encode, 2-7% border crop, brightness, text overlay, mirror), after a *compound* of two to
four of them (as resellers re-post), or an exact copy (same bytes, or the same pixels saved as
PNG). Scores compare predicted groups with the planted families.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from curation.images import load_image

NEAR_TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "text", "mirror")
EXACT_TRANSFORMS = ("bytes", "pixels")
COMPOUND = "compound"
# A compound copy's edits are applied in this order (a reseller crops and flips, then marks,
# then scales down and saves); its parameters are the issue's: resize 45-85 %, crop 2-7 %,
# brightness +-20 %, a watermark, mirror, JPEG quality 45-85.
_COMPOUND_ORDER = ("crop", "mirror", "brightness", "text", "resize", "jpeg")
_TEXTS = ("FOR SALE  Rs 4,50,000", "www.carsforyou.in", "CALL 98765 43210", "SOLD",
          "Best price guaranteed")


def transform(image: Image.Image, name: str, rng: np.random.Generator, *,
              scales: tuple[float, float] = (0.4, 0.8),
              brightness: tuple[float, ...] = (0.7, 0.8, 1.2, 1.3)) -> Image.Image:
    """One planted near-duplicate edit of an RGB image (parameters drawn from rng)."""
    width, height = image.size
    if name == "resize":
        scale = rng.uniform(*scales)
        return image.resize((max(8, round(width * scale)), max(8, round(height * scale))),
                            Image.Resampling.LANCZOS)
    if name == "crop":
        left, top, right, bottom = rng.uniform(0.02, 0.07, size=4)
        return image.crop((round(width * left), round(height * top),
                           width - round(width * right), height - round(height * bottom)))
    if name == "brightness":
        return ImageEnhance.Brightness(image).enhance(float(rng.choice(brightness)))
    if name == "text":
        out = image.copy()
        size = max(10, height // 10)
        font = ImageFont.load_default(size=size)
        text = str(rng.choice(_TEXTS))
        x = int(rng.uniform(0.02, 0.4) * width)
        y = int(rng.uniform(0.05, 0.85) * height)
        ImageDraw.Draw(out).text((x, y), text, fill=(255, 255, 255), font=font,
                                 stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
        return out
    if name == "mirror":
        return ImageOps.mirror(image)
    if name == "jpeg":
        return image
    raise ValueError(f"unknown transform {name!r}")


def plant_copy(source: Path, out: Path, name: str, rng: np.random.Generator,
               edits: Sequence[str] = ()) -> Path:
    """Write one planted copy of source to out (JPEG, or PNG for 'pixels'); returns the path.
    A compound copy gets `edits` (see compound_edits)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if name == "bytes":
        shutil.copyfile(source, out)
        return out
    image = load_image(source)
    if name == "pixels":
        out = out.with_suffix(".png")
        image.save(out, format="PNG")
        return out
    if name == COMPOUND:
        for edit in edits:
            image = transform(image, edit, rng, scales=(0.45, 0.85),
                              brightness=(0.8, 0.9, 1.1, 1.2))
        quality = int(rng.integers(45, 86)) if "jpeg" in edits else 90
    else:
        quality = int(rng.integers(30, 61)) if name == "jpeg" else 90
        image = transform(image, name, rng)
    image.save(out, format="JPEG", quality=quality)
    return out


def compound_edits(rng: np.random.Generator) -> list[str]:
    """Two to four different edits drawn at random, in the order a reseller applies them."""
    chosen = set(rng.choice(_COMPOUND_ORDER, size=int(rng.integers(2, 5)), replace=False))
    return [edit for edit in _COMPOUND_ORDER if edit in chosen]


def plant(sources: list[Path], folder: Path, *, seed: int = 0, exact_every: int = 10,
          compound: bool = False) -> pd.DataFrame:
    """One near copy per source (transforms in turn) plus exact copies of every exact_every-th;
    with compound, also one compound copy per source (compound_edits).

    Returns one row per file (originals first): path, family (the source's index), transform
    ('original' for sources).
    """
    rng = np.random.default_rng(seed)
    compound_rng = np.random.default_rng([seed, 1])   # the single-edit copies stay as they were
    rows = [{"path": str(p), "family": f, "transform": "original", "edits": ""}
            for f, p in enumerate(sources)]
    for f, source in enumerate(sources):
        names = [NEAR_TRANSFORMS[f % len(NEAR_TRANSFORMS)]]
        if exact_every and f % exact_every == 0:
            names.append(EXACT_TRANSFORMS[(f // exact_every) % len(EXACT_TRANSFORMS)])
        for name in names:
            out = plant_copy(source, folder / f"{f:05d}_{name}.jpg", name, rng)
            rows.append({"path": str(out), "family": f, "transform": name, "edits": name})
        if compound:
            edits = compound_edits(compound_rng)
            out = plant_copy(source, folder / f"{f:05d}_{COMPOUND}.jpg", COMPOUND, compound_rng,
                             edits)
            rows.append({"path": str(out), "family": f, "transform": COMPOUND,
                         "edits": "+".join(edits)})
    return pd.DataFrame(rows)


def _pairs(counts: pd.Series) -> int:
    return int((counts * (counts - 1) // 2).sum())


def pair_scores(groups: np.ndarray, families: np.ndarray,
                classes: np.ndarray | None = None) -> dict:
    """Pair precision/recall of predicted groups against true families.

    groups: predicted group per image (-1 or NaN: in no group); families: true family per
    image (-1: no planted relative); classes (optional): label per image, to split false pairs
    into different-class pairs (surely distinct cars) and same-class pairs (maybe natural copies).
    """
    frame = pd.DataFrame({"g": pd.Series(groups).fillna(-1).astype(int).to_numpy(),
                          "f": np.asarray(families)})
    grouped = frame[frame["g"] >= 0]
    predicted = _pairs(grouped.groupby("g").size())
    truth = _pairs(frame[frame["f"] >= 0].groupby("f").size())
    hits = _pairs(grouped[grouped["f"] >= 0].groupby(["g", "f"]).size())
    out = {"predicted_pairs": predicted, "true_pairs": truth, "hits": hits,
           "precision": round(hits / predicted, 4) if predicted else 1.0,
           "recall": round(hits / truth, 4) if truth else 1.0}
    if classes is not None:
        grouped = grouped.assign(c=np.asarray(classes)[grouped.index])
        same_class = _pairs(grouped.groupby(["g", "c"]).size())
        out["false_pairs_other_class"] = predicted - same_class
        out["false_pairs_same_class"] = same_class - hits
    return out


def recall_by_transform(groups: np.ndarray, planted: pd.DataFrame) -> dict:
    """Per transform: the share of copies that landed in the same group as their original."""
    group = pd.Series(groups).fillna(-1).astype(int).to_numpy()
    is_original = (planted["transform"] == "original").to_numpy()
    first = pd.Series(np.flatnonzero(is_original), index=planted["family"][is_original])
    copies = planted[~is_original]
    mine = group[copies.index]
    theirs = group[first[copies["family"]].to_numpy()]
    found = (mine >= 0) & (mine == theirs)
    return {str(k): round(float(v), 4)
            for k, v in pd.Series(found, index=copies["transform"]).groupby(level=0).mean().items()}
