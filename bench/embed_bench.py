"""Benchmark `curate embed`: images/s of the onnx and keras engines on the same JPEG files in the
same run, with and without the mirror view, end to end (files -> decoded batches -> vectors in a
fresh cache), plus the smallest per-image cosine between the two engines' vectors.

Each engine lives in its own process, as in real use (TensorFlow's threads must not share a
process with ONNX Runtime's), and is built and warmed up first (model load, ONNX export, graph
tracing are one-off costs, reported apart); then the timed runs alternate engines, `--rounds`
times, so a change in the machine's load hits both. Prints one JSON object. Example:
    CURATE_DATA=../shared/data CURATE_WEIGHTS=../shared/weights python bench/embed_bench.py
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from curation.config import resolve_dataset
from curation.embed.compute import EmbedSettings, embed_files
from curation.embed.engines import ENGINES, cores, embed_views, get_engine
from curation.images import image_files

TARGETS = {"ratio_onnx_over_keras": 3.0, "onnx_images_per_second_tta": 80.0,
           "onnx_images_per_second_no_tta": 150.0}


def warm_up(settings: EmbedSettings) -> float:
    """Build the engine and run the batch shapes the timed runs use; seconds taken."""
    started = time.perf_counter()
    s = settings
    engine = get_engine(s.engine_name, s.backbone, s.weights, s.image_size, s.seed)
    for count in (s.batch_size, 3):
        for tta in (True, False):
            embed_views(engine, np.zeros((count, s.image_size, s.image_size, 3), np.uint8), tta=tta)
    return round(time.perf_counter() - started, 2)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding workers)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def timed_run(files: list[str], root: Path,
              settings: EmbedSettings) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds to embed `files` into a fresh cache, and the vectors."""
    with tempfile.TemporaryDirectory() as scratch:
        started, cpu = time.perf_counter(), cpu_seconds()
        run = embed_files(files, Path(scratch), root=root, settings=settings, quiet=True)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if run.failed:
        sys.exit(f"could not embed {len(run.failed)} files, e.g. {next(iter(run.failed.items()))}")
    return seconds, cpu, run.vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stanford-cars-25")
    parser.add_argument("--limit", type=int, help="files to embed per timed run (default: all; "
                        "a few hundred leave the ~1 s start of each run in the rate)")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per engine and view")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="decoding processes (default: cores)")
    parser.add_argument("--backbone", default="mobilenet_v2")
    args = parser.parse_args()
    config = resolve_dataset(args.dataset)
    files = [str(p.relative_to(config.root)) for p in image_files(config.root)][:args.limit or None]
    base = dict(backbone=args.backbone, weights=config.weights, image_size=config.image_size,
                batch_size=args.batch_size, workers=args.workers)
    report = {"bench": "embed", "dataset": config.name, "images": len(files),
              "backbone": args.backbone, "image_size": config.image_size,
              "batch_size": args.batch_size, "cpu_cores": cores(),
              "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    spawn = get_context("spawn")
    runners = {e: ProcessPoolExecutor(1, mp_context=spawn) for e in ENGINES}
    with runners["onnx"], runners["keras"]:
        report["warm_up_seconds"] = {e: runners[e].submit(warm_up, EmbedSettings(engine=e, **base))
                                     .result() for e in ENGINES}
        for tta in (True, False):
            seconds, cpu, vectors = {e: 0.0 for e in ENGINES}, {e: 0.0 for e in ENGINES}, {}
            for _ in range(args.rounds):
                for e in ENGINES:
                    settings = EmbedSettings(engine=e, tta=tta, **base)
                    took, used, vectors[e] = runners[e].submit(timed_run, files, config.root,
                                                               settings).result()
                    seconds[e] += took
                    cpu[e] += used
            rate = {e: round(args.rounds * len(files) / seconds[e], 1) for e in ENGINES}
            report["mirror_view" if tta else "no_mirror_view"] = {
                "images_per_second": rate,
                "ratio_onnx_over_keras": round(rate["onnx"] / rate["keras"], 2),
                "cpu_ms_per_image": {e: round(1000 * cpu[e] / (args.rounds * len(files)), 1)
                                     for e in ENGINES},
                "min_cosine_onnx_vs_keras":
                    round(float(cosines(vectors["onnx"], vectors["keras"]).min()), 6)}
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    mirror, plain = report["mirror_view"], report["no_mirror_view"]
    report["targets_met"] = {
        "onnx>=3x_keras": min(mirror["ratio_onnx_over_keras"], plain["ratio_onnx_over_keras"])
        >= TARGETS["ratio_onnx_over_keras"],
        "onnx>=80_img/s_mirror":
            mirror["images_per_second"]["onnx"] >= TARGETS["onnx_images_per_second_tta"],
        "onnx>=150_img/s_no_mirror":
            plain["images_per_second"]["onnx"] >= TARGETS["onnx_images_per_second_no_tta"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
