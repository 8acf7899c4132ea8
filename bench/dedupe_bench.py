"""Benchmark `curate dedupe`: accuracy on planted copies of real photos, hashing speed against
imagededup's PHash on the same files, and the Hamming search alone on 1,000,000 hashes.

Planted copies go to a temporary folder (never into $CURATE_DATA) and are deleted afterwards.
Prints one JSON object. Example:
    CURATE_DATA=../shared/data python bench/dedupe_bench.py --limit 600
    CURATE_DATA=../shared/data CURATE_WEIGHTS=../shared/weights python bench/dedupe_bench.py \
        --compound --limit 400 --compare-python .venv-bench/bin/python
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from curation.dedupe.grouping import (DEFAULT_KINDS, PAIRED_THRESHOLDS, SOLO_THRESHOLDS, components,
                               equal_key_pairs, exact_pairs, group_duplicates, thresholds_for)
from curation.dedupe.evaluation import pair_scores, plant, recall_by_transform
from curation.dedupe.hamming import pairs_within
from curation.dedupe.hashing import (DECODE_MIN_SIDE, KINDS, hash_columns, hash_files, pixel_digests,
                              to_uint64)
from curation.images import ImageError, load_gray, load_image, probe
from curation.parallel import map_files
from dedupe_compound import main_compound

COMBOS = [("phash",), ("dhash",), ("whash",), ("ahash",), ("phash", "dhash"),
          ("phash", "ahash"), ("phash", "whash")]
TARGET_PRECISION = 0.99
LARGE_SIDE = 1600
SWEEP_COLUMNS = ("threshold", "recall", "precision", "precision_distinct_cars")


def file_rows(paths: list[str]) -> pd.DataFrame:
    """What the scan would record for each file: size, bytes, sha256."""
    info = [probe(Path(p)) for p in paths]
    return pd.DataFrame({"path": paths, "width": [i.width for i in info],
                         "height": [i.height for i in info],
                         "bytes": [os.path.getsize(p) for p in paths],
                         "sha256": [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]})


def time_ours(paths: list[str], kinds: tuple[str, ...], workers: int) -> float:
    """Images/s of hash_files over paths."""
    started = time.perf_counter()
    hash_files(paths, kinds, workers=workers, quiet=True)
    return len(paths) / (time.perf_counter() - started)


def decode_shape(path: str) -> tuple[int, ...]:
    """The hashing decode alone (load_gray at the hashing scale), for the decode ceiling."""
    try:
        return load_gray(path, min_side=DECODE_MIN_SIDE).shape
    except ImageError:
        return ()


def time_decode(paths: list[str], workers: int) -> float:
    """Images/s of the decode that hashing starts with, nothing else: the ceiling for hashing."""
    started = time.perf_counter()
    map_files(decode_shape, paths, workers=workers, quiet=True)
    return len(paths) / (time.perf_counter() - started)


def link_originals(sources: list[Path], folder: Path) -> None:
    """Symlinks to the chosen originals in the temp folder, so imagededup reads exactly them."""
    folder.mkdir(parents=True)
    for k, source in enumerate(sources):
        (folder / f"{k:05d}{source.suffix}").symlink_to(source.resolve())


def upscale(sources: list[Path], folder: Path, side: int) -> list[str]:
    """JPEG copies of sources with the long side scaled to `side` (bicubic, quality 90)."""
    folder.mkdir(parents=True)
    out = []
    for k, source in enumerate(sources):
        image = load_image(source)
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BICUBIC)
        image.save(folder / f"{k:05d}.jpg", quality=90)
        out.append(str(folder / f"{k:05d}.jpg"))
    return out


def compare_speed(paths: list[str], folders: list[Path], workers: int, repeats: int) -> dict:
    """Images/s of our default hashes and of pHash alone vs imagededup's PHash, same files: the
    best of `repeats` interleaved runs each, so a noisy neighbour on the machine hits both."""
    for path in paths:                       # warm the page cache for both contenders
        Path(path).read_bytes()
    runs: dict[str, list] = {"default": [], "phash": [], "decode": [], "imagededup": []}
    for _ in range(repeats):
        runs["decode"].append(time_decode(paths, workers))
        runs["default"].append(time_ours(paths, DEFAULT_KINDS, workers))
        runs["phash"].append(time_ours(paths, ("phash",), workers))
        runs["imagededup"].append(time_imagededup(folders, workers, len(paths)))
    theirs = max(runs["imagededup"], key=lambda r: r.get("images_per_second", 0))
    speed = {"files": len(paths), "repeats": repeats,
             "ours_phash_dhash_images_per_second": round(max(runs["default"]), 1),
             "ours_phash_images_per_second": round(max(runs["phash"]), 1),
             "decode_only_images_per_second": round(max(runs["decode"]), 1),
             "imagededup_phash": theirs}
    if theirs.get("available"):
        speed["decode_only_vs_imagededup"] = round(max(runs["decode"])
                                                   / theirs["images_per_second"], 2)
        speed["speedup_phash_dhash"] = round(max(runs["default"]) / theirs["images_per_second"], 2)
        speed["speedup_phash"] = round(max(runs["phash"]) / theirs["images_per_second"], 2)
    return speed


def time_imagededup(folders: list[Path], workers: int, expected: int) -> dict:
    """imagededup PHash.encode_images over the same folders, or why it could not run."""
    try:
        from imagededup.methods import PHash
    except ImportError as exc:
        return {"available": False, "reason": f"imagededup not installed ({exc}); "
                                              f"pip install imagededup (bench-only extra)"}
    import logging
    logging.getLogger("imagededup").setLevel(logging.WARNING)
    hasher = PHash(verbose=False)
    started = time.perf_counter()
    encoded = sum(len(hasher.encode_images(image_dir=str(f), recursive=True,
                                           num_enc_workers=workers)) for f in folders)
    seconds = time.perf_counter() - started
    return {"available": True, "images": encoded, "images_per_second": round(encoded / seconds, 1),
            "same_file_count": encoded == expected}


def sweep(rows: pd.DataFrame, hashes: dict, planted: pd.DataFrame, classes: np.ndarray) -> dict:
    """Pair precision/recall per hash combination and threshold, and the best threshold each."""
    families = planted["family"].to_numpy()
    out = {}
    for combo in COMBOS:
        name = "+".join(combo)
        results = []
        for t in range(0, 17):
            groups = group_duplicates(rows, hashes, {k: t for k in combo})["dup_group"]
            score = pair_scores(groups.to_numpy(dtype="float64", na_value=np.nan), families, classes)
            distinct = 1 - score["false_pairs_other_class"] / max(score["predicted_pairs"], 1)
            results.append([t, score["recall"], score["precision"], round(distinct, 4)])
        ok = [r for r in results if r[3] >= TARGET_PRECISION]
        best = max(ok, key=lambda r: (r[1], -r[0])) if ok else None
        out[name] = {"best": dict(zip(SWEEP_COLUMNS, best)) if best else None,
                     "sweep": [" ".join(f"{v:g}" for v in r) for r in results]}
    return {"columns": " ".join(SWEEP_COLUMNS), **out}


def exact_scores(rows: pd.DataFrame, hashes: dict, paths: list[str], workers: int) -> dict:
    """Same-bytes/same-pixels groups found by dedupe vs a reference that decodes every file."""
    reference = pixel_digests(paths, workers=workers, quiet=True)
    truth_edges = np.concatenate([_equal_edges(rows["sha256"]), _equal_edges(reference)], axis=1)
    truth = components(len(rows), *truth_edges)
    plain = hashes["phash"]
    ci, cj, _ = pairs_within(plain, 64)
    edges, _ = exact_pairs(rows, plain, ci, cj,
                           lambda idx: pixel_digests([paths[k] for k in idx], workers=workers,
                                                     quiet=True))
    score = pair_scores(components(len(rows), *edges), truth)
    return {"precision": score["precision"], "recall": score["recall"],
            "true_pairs": score["true_pairs"], "found_pairs": score["predicted_pairs"]}


def _equal_edges(keys) -> np.ndarray:
    return np.array(equal_key_pairs(list(keys))).reshape(2, -1)


def search_scale(n: int, radius: int, planted_pairs: int, seed: int) -> dict:
    """pairs_within alone on n random 64-bit hashes holding planted pairs at distance <= radius."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    sources = rng.choice(n // 2, planted_pairs, replace=False)
    targets = n // 2 + np.arange(planted_pairs)
    copies = hashes[sources].copy()
    for k, flips in enumerate(rng.integers(0, radius + 1, size=planted_pairs)):
        for bit in rng.choice(64, flips, replace=False):
            copies[k] ^= np.uint64(1) << np.uint64(bit)
    hashes[targets] = copies
    started = time.perf_counter()
    i, j, d = pairs_within(hashes, radius)
    seconds = time.perf_counter() - started
    found = set(zip(i.tolist(), j.tolist()))
    hits = sum((int(min(a, b)), int(max(a, b))) in found for a, b in zip(sources, targets))
    return {"hashes": n, "radius": radius, "seconds": round(seconds, 2), "pairs_found": int(len(i)),
            "planted_pairs": planted_pairs, "planted_recall": round(hits / planted_pairs, 4),
            "max_distance_found": int(d.max()) if len(d) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="originals to use (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--search-size", type=int, default=1_000_000)
    parser.add_argument("--search-radius", type=int, default=10)
    parser.add_argument("--large", type=int, default=600,
                        help=f"originals upscaled to {LARGE_SIDE} px for the second speed test")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved speed runs per contender; the best of each is reported")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--compound", action="store_true",
                        help="single and compound edits, curate vs fastdup and cleanvision "
                             "(bench/dedupe_compound.py); --limit picks originals across classes")
    parser.add_argument("--keep", help="--compound: plant into (and reuse) this folder, with "
                                       "its embedding cache, instead of a temporary one")
    parser.add_argument("--compare-python",
                        help="--compound: interpreter of a virtualenv with the bench extra "
                             "(fastdup, cleanvision)")
    args = parser.parse_args()
    data = os.environ.get("CURATE_DATA")
    source_dir = Path(data or ".") / "stanford-cars-25"
    if not source_dir.is_dir():
        sys.exit(f"{source_dir} not found: set CURATE_DATA to the shared data folder")
    sources = sorted(source_dir.glob("*/*.jpg"))
    if args.compound:
        step = max(1, len(sources) // args.limit) if args.limit else 1
        main_compound(args, sources[::step][:args.limit or None], file_rows)
        return
    sources = sources[:args.limit] if args.limit else sources
    report: dict = {"dataset": "stanford-cars-25", "originals": len(sources), "seed": args.seed,
                    "workers": args.workers, "cores": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="curate_dedupe_bench_"))
    try:
        planted = plant(sources, work / "copies", seed=args.seed)
        paths = planted["path"].tolist()
        report["files"] = len(paths)
        report["planted"] = planted["transform"].value_counts().sort_index().to_dict()
        link_originals(sources, work / "originals")
        report["hashing"] = compare_speed(paths, [work / "originals", work / "copies"],
                                          args.workers, args.repeats)
        large = upscale(sources[:args.large], work / "large", LARGE_SIDE)
        report["hashing_large_photos"] = {
            "note": f"{len(large)} originals upscaled to {LARGE_SIDE} px, the size of typical "
                    f"listing photos (stanford-cars-25 is capped at 800 px)",
            **compare_speed(large, [work / "large"], args.workers, args.repeats)}
        frame = hash_files(paths, KINDS, workers=args.workers, quiet=True)
        hashes = {c: to_uint64(frame[c]) for c in hash_columns(KINDS)}
        rows = file_rows(paths)
        labels = planted["family"].map(dict(enumerate(Path(s).parent.name for s in sources)))
        classes = labels.to_numpy()
        report["exact"] = exact_scores(rows, hashes, paths, args.workers)
        thresholds = thresholds_for(DEFAULT_KINDS, None)
        groups = group_duplicates(rows, hashes, thresholds)["dup_group"]
        groups = groups.to_numpy(dtype="float64", na_value=np.nan)
        score = pair_scores(groups, planted["family"].to_numpy(), classes)
        score["precision_distinct_cars"] = round(
            1 - score["false_pairs_other_class"] / max(score["predicted_pairs"], 1), 4)
        report["near_default"] = {"kinds": list(DEFAULT_KINDS), "thresholds": thresholds,
                                  **score, "recall_by_transform": recall_by_transform(groups, planted)}
        report["defaults_in_code"] = {"solo": SOLO_THRESHOLDS, "paired": PAIRED_THRESHOLDS}
        if not args.skip_sweep:
            report["sweep"] = sweep(rows, hashes, planted, classes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["search"] = search_scale(args.search_size, args.search_radius, 1000, args.seed)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
