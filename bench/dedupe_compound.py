"""`bench/dedupe_bench.py --compound`: single and compound edits planted on stanford-cars-25,
found by curate dedupe (hash-only and with the embedding stage) and, on the same files in the
same run, by fastdup (threshold swept for its best F1) and cleanvision; P/R and images/s side
by side as one JSON object.

fastdup and cleanvision come from the `bench` extra, installed in their own virtualenv
(fastdup pins numpy<2): pass its interpreter with --compare-python. They run in a subprocess
(bench/competitors.py) on the very files we read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from curation.dedupe.evaluation import COMPOUND, pair_scores, plant, recall_by_transform
from curation.dedupe.geometry import thumbnails
from curation.dedupe.grouping import DEFAULT_KINDS, components, group_duplicates, thresholds_for
from curation.dedupe.hashing import hash_columns, hash_files, pixel_digests, to_uint64
from curation.embed.compute import EmbedSettings, embed_files

FASTDUP_SWEEP = tuple(round(s, 2) for s in np.arange(0.80, 1.0, 0.01))


def planted_set(sources: list[Path], folder: Path, seed: int) -> pd.DataFrame:
    """The planted files (one single-edit and one compound copy per source, exact copies of
    every tenth), made once per folder: a kept folder is reused as is (same seed, same files)."""
    table = folder / "planted.csv"
    if table.exists():
        return pd.read_csv(table, keep_default_na=False)
    planted = plant(sources, folder / "copies", seed=seed, compound=True)
    folder.mkdir(parents=True, exist_ok=True)
    planted.to_csv(table, index=False)
    return planted


def scores(groups: np.ndarray, planted: pd.DataFrame, classes: np.ndarray) -> dict:
    """Pair P/R (strict and on distinct cars), recall per edit family and for compound copies."""
    score = pair_scores(groups, planted["family"].to_numpy(), classes)
    distinct = 1 - score["false_pairs_other_class"] / max(score["predicted_pairs"], 1)
    return {"precision_distinct_cars": round(distinct, 4), "precision_strict": score["precision"],
            "recall": score["recall"], "predicted_pairs": score["predicted_pairs"],
            "true_pairs": score["true_pairs"],
            "false_pairs_other_class": score["false_pairs_other_class"],
            "false_pairs_same_class": score["false_pairs_same_class"],
            "recall_by_edit": recall_by_transform(groups, planted)}


def f1(score: dict) -> float:
    p, r = score["precision_distinct_cars"], score["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


def group_array(n: int, sets: list[list[int]]) -> np.ndarray:
    """Group label per image from lists of member indices (joined when they overlap)."""
    edges = [(members[0], m) for members in sets for m in members[1:]]
    i, j = (np.array(side, dtype=np.int64) for side in zip(*edges)) if edges else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    return components(n, i, j).astype(float)


def run_competitors(paths: list[str], python: str, workers: int) -> dict:
    """bench/competitors.py under the given interpreter; {} entries say why when it failed."""
    with tempfile.TemporaryDirectory(prefix="curate_competitors_") as work:
        listing, out = Path(work) / "files.txt", Path(work) / "out.json"
        listing.write_text("\n".join(paths))
        done = subprocess.run([python, str(Path(__file__).with_name("competitors.py")),
                               str(listing), str(out), "--threshold", str(FASTDUP_SWEEP[0]),
                               "--threads", str(workers)], capture_output=True, text=True)
        if done.returncode or not out.exists():
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"fastdup": {"available": False, "reason": reason},
                    "cleanvision": {"available": False, "reason": reason}}
        return json.loads(out.read_text())


def fastdup_scores(result: dict, planted: pd.DataFrame, classes: np.ndarray) -> dict:
    """fastdup's groups at each similarity threshold (connected components of its similarity
    pairs at >= threshold: what its ccthreshold does), the best F1, and its own default run."""
    if not result.get("available"):
        return result
    n = len(planted)
    pairs = np.array(result.pop("pairs"), dtype=float).reshape(-1, 3)
    sweep = {}
    for threshold in FASTDUP_SWEEP:
        kept = pairs[pairs[:, 2] >= threshold]
        groups = components(n, kept[:, 0].astype(np.int64), kept[:, 1].astype(np.int64))
        sweep[threshold] = scores(groups.astype(float), planted, classes)
    best = max(sweep, key=lambda t: f1(sweep[t]))
    own = scores(group_array(n, result.pop("default_ccthreshold_groups")), planted, classes)
    return {**result, "best_threshold": best, "best": sweep[best],
            "default_ccthreshold_0.96": own,
            "sweep": {f"{t:.2f}": f"P {s['precision_distinct_cars']} R {s['recall']}"
                      for t, s in sweep.items()}}


def ours(rows: pd.DataFrame, paths: list[str], planted: pd.DataFrame, classes: np.ndarray,
         work: Path, workers: int) -> dict:
    """curate dedupe's core on the planted files: hash-only, then with the embedding stage
    (embeddings cached in `work`: a warm cache embeds nothing)."""
    started = time.perf_counter()
    frame = hash_files(paths, DEFAULT_KINDS, workers=workers, quiet=True)
    hashes = {c: to_uint64(frame[c]) for c in hash_columns(DEFAULT_KINDS)}
    hash_seconds = time.perf_counter() - started
    thresholds = thresholds_for(DEFAULT_KINDS, None)

    def digest(index):
        return pixel_digests([paths[k] for k in index], workers=workers, quiet=True)

    started = time.perf_counter()
    hash_only = group_duplicates(rows, hashes, thresholds, pixel_digest=digest)
    group_seconds = time.perf_counter() - started
    embedded = embed_files(paths, work, quiet=True, settings=EmbedSettings(
        backbone="mobilenet_v2", weights="imagenet", image_size=224, tta=True, workers=workers))
    started = time.perf_counter()
    with_embeddings = group_duplicates(rows, hashes, thresholds, pixel_digest=digest,
                                       vectors=embedded.vectors, thumbnails=lambda index:
                                       thumbnails([paths[k] for k in index], workers=workers))
    embed_group_seconds = time.perf_counter() - started
    hash_total = hash_seconds + group_seconds
    out = {"hash_only": {**scores(_groups(hash_only), planted, classes),
                         "seconds": round(hash_total, 2),
                         "images_per_second": round(len(paths) / hash_total, 1)},
           "with_embeddings": {**scores(_groups(with_embeddings), planted, classes),
                               "chains_cut": int(with_embeddings["dup_split"].notna().sum())},
           "embedding": {"computed": embedded.computed, "reused": embedded.reused,
                         "seconds": round(embedded.seconds, 2),
                         "images_per_second": embedded.images_per_second}}
    if embedded.reused == 0:
        total = hash_total + embedded.seconds + embed_group_seconds
        out["with_embeddings"].update(seconds=round(total, 2),
                                      images_per_second=round(len(paths) / total, 1))
    else:
        out["with_embeddings"]["images_per_second"] = "not timed: the embedding cache was warm"
    return out


def _groups(result: pd.DataFrame) -> np.ndarray:
    return result["dup_group"].to_numpy(dtype="float64", na_value=np.nan)


def compound_report(sources: list[Path], *, seed: int, workers: int, keep: Path | None,
                    compare_python: str | None, file_rows) -> dict:
    """The whole comparison; file_rows(paths) gives what the scan records per file."""
    work = keep or Path(tempfile.mkdtemp(prefix="curate_compound_bench_"))
    try:
        return _compare(sources, seed, workers, work, compare_python, file_rows)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _compare(sources: list[Path], seed: int, workers: int, work: Path,
             compare_python: str | None, file_rows) -> dict:
    planted = planted_set(sources, work, seed)
    paths = planted["path"].tolist()
    classes = planted["family"].map(dict(enumerate(Path(s).parent.name for s in sources)))
    classes = classes.to_numpy()
    report: dict = {"dataset": "stanford-cars-25", "originals": len(sources), "seed": seed,
                    "files": len(paths), "workers": workers, "cores": os.cpu_count(),
                    "load_before": os.getloadavg(),
                    "planted": planted["transform"].value_counts().sort_index().to_dict(),
                    "compound_edits": planted.loc[planted["transform"] == COMPOUND, "edits"]
                    .str.count(r"\+").add(1).value_counts().sort_index()
                    .rename(lambda k: f"{k} edits").to_dict()}
    rows = file_rows(paths)
    report["curate"] = ours(rows, paths, planted, classes, work, workers)
    if compare_python:
        found = run_competitors(paths, compare_python, workers)
        report["fastdup"] = fastdup_scores(found["fastdup"], planted, classes)
        cleanvision = found["cleanvision"]
        if cleanvision.get("available"):
            sets = cleanvision.pop("sets")
            cleanvision.update(scores(group_array(len(paths), sets), planted, classes))
        report["cleanvision"] = cleanvision
    else:
        report["competitors"] = "not run: give --compare-python (a virtualenv with the bench extra)"
    report["load_after"] = os.getloadavg()
    return report


def main_compound(args, sources: list[Path], file_rows) -> None:
    """Entry point used by dedupe_bench.py --compound."""
    report = compound_report(sources, seed=args.seed, workers=args.workers,
                             keep=Path(args.keep) if args.keep else None,
                             compare_python=args.compare_python, file_rows=file_rows)
    sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
