"""Benchmark `curate flag-noise`: detection of planted wrong labels and non-car photos
(embedding speed: bench/embed_bench.py).

Noise is planted in memory by curation.noise.audit (labels moved to a random wrong class, non-car
photos from $CURATE_DATA/non-car added under random labels); no file is copied or changed.
Embeddings are cached in --workdir, so re-runs take seconds. Prints one JSON object. Example:
    CURATE_DATA=../shared/data CURATE_WEIGHTS=../shared/weights python bench/noise_bench.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from curation.noise.audit import audit
from curation.config import data_dir, resolve_dataset
from curation.embed.compute import EmbedSettings, embed_files, embed_manifest
from curation.manifest import read_manifest
from curation.noise.step import class_ids, judging_units, outside_photos
from curation.noise.signals import NoiseParams
from curation.scan.step import scan

TARGETS = {"non_car_recall": 0.95, "non_car_precision": 0.90, "mislabel_f1": 0.75}
METRICS = ("precision", "recall", "f1")


def summarise(results: list[dict]) -> dict:
    """Mean, min and max over seeds of each kind's precision/recall/F1 and of the AUROC."""
    out = {}
    for kind in ("non_car", "mislabel", "any"):
        rows = [r[kind] for r in results if kind in r]
        out[kind] = {m: _spread([r[m] for r in rows]) for m in METRICS}
        out[kind]["planted"] = rows[0]["planted"]
    out["auroc"] = _spread([r["auroc"] for r in results])
    out["outlier_flags"] = _spread([r["outlier_flags"] for r in results])
    out["suggested_label_accuracy"] = _spread([r.get("suggested_label_accuracy", 0.0) for r in results])
    for key in ("mislabel_estimate", "probe_agreement"):
        out[key] = _spread([r["detector"].get(key, 0) for r in results])
    return out


def _spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
            "max": round(float(np.max(values)), 4)}


def bench_backbone(args, config, workdir: Path, rows, noncar: list[str], backbone: str) -> dict:
    settings = EmbedSettings(backbone=backbone, weights="imagenet", image_size=config.image_size,
                             tta=not args.no_tta, engine=args.engine)
    started = time.perf_counter()
    run = embed_manifest(rows, config.root, workdir, settings=settings, quiet=True)
    outside = embed_files(noncar, workdir, settings=settings, quiet=True)
    embed_seconds = time.perf_counter() - started
    _, units = judging_units(rows)
    labels, _ = class_ids(units["label"])
    results, judge_seconds = [], []
    for seed in range(args.seeds):
        started = time.perf_counter()
        results.append(audit(run.vectors[units["row"].to_numpy()], labels, units["group"].to_numpy(),
                             outside=outside.vectors, mislabel_rate=args.rate,
                             outside_rate=args.rate, params=NoiseParams(seed=seed)))
        judge_seconds.append(time.perf_counter() - started)
    summary = summarise(results)
    summary["targets_met"] = {
        "non_car_recall>=0.95_at_precision>=0.90":
            summary["non_car"]["recall"]["min"] >= TARGETS["non_car_recall"]
            and summary["non_car"]["precision"]["min"] >= TARGETS["non_car_precision"],
        "mislabel_f1>=0.75": summary["mislabel"]["f1"]["mean"] >= TARGETS["mislabel_f1"]}
    summary["detect_seconds_per_run"] = round(float(np.mean(judge_seconds)), 2)
    summary["embedding"] = {"engine": run.engine, "run_seconds": round(embed_seconds, 2),
                            "computed_now": run.computed + outside.computed}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stanford-cars-25")
    parser.add_argument("--backbones", default="mobilenet_v2,mobilenet_v1_025")
    parser.add_argument("--seeds", type=int, default=5, help="planting seeds to average over")
    parser.add_argument("--rate", type=float, default=0.05, help="planted fraction of each kind")
    parser.add_argument("--no-tta", action="store_true", help="embed without the mirror view")
    parser.add_argument("--engine", choices=("onnx", "keras"),
                        help="embedding engine (default: onnx when installed); embeddings are "
                        "cached per workdir, so compare engines with separate --workdir folders")
    parser.add_argument("--workdir", type=Path, default=Path(".curate/bench-noise"))
    args = parser.parse_args()
    if data_dir() is None or not (data_dir() / "non-car").is_dir():
        sys.exit("set CURATE_DATA to the shared data folder (with non-car/)")
    config = resolve_dataset(args.dataset)
    workdir = (args.workdir / config.name).resolve()
    scan(config, workdir, quiet=True)
    manifest = read_manifest(workdir)
    rows = manifest[manifest["readable"]].reset_index(drop=True)
    noncar = outside_photos(data_dir() / "non-car")
    report = {"bench": "noise", "dataset": config.name, "images": int(len(rows)),
              "non_car_pool": len(noncar), "planted_rate": {"mislabel": args.rate,
                                                            "non_car": args.rate},
              "seeds": args.seeds, "tta": not args.no_tta, "backbones": {}}
    for backbone in args.backbones.split(","):
        report["backbones"][backbone] = bench_backbone(args, config, workdir, rows,
                                                       noncar, backbone)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
