"""Scale bench: scan and hash-only dedupe of 10k-200k generated photos, and embed on a 5k subset,
with the in-process pool and with --cluster local (Dask); seconds, images/s and peak memory per
step and size as JSON.

Each generated JPEG is a random crop of one shared photo with a random inset from another,
scaled, colour-shifted and re-encoded at a random quality, so no two are near-duplicates except
the planted ones: every 100th image is a near copy (shrunk, re-encoded) of the one before it.
They are made once into --data-dir (never into $CURATE_DATA) and reused; a size-N dataset is a
folder of hard links to the first N. Every step runs as its own `curate` process on a fresh
workdir; memory is the peak of the summed RSS of that process and all its children (pool or
Dask workers), sampled every 0.2 s. Example:
    CURATE_DATA=../shared/data python bench/scale_bench.py --sizes 10000 --data-dir /tmp/scale
    python bench/scale_bench.py --sizes 10000,50000,200000 --data-dir /data/scale   # idle machine
Dedupe runs hash-only (--embeddings off). `curate embed` is timed on --embed-subset files (after an
untimed scan) with each engine and extrapolated per image to every size. --build-only generates
the photos and stops (a one-off job; run it ahead, e.g. under `nice -n 19`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageEnhance

from curation.config import data_dir
from curation.parallel import map_files

REPO = Path(__file__).resolve().parent.parent
PLANT_EVERY = 100          # image k is a near copy of image k - 1 when k % PLANT_EVERY == 99
CLASSES = 10
ENGINES = {"pool": [], "dask-local": ["--cluster", "local"]}


def source_photos(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


def _random_crop(image: Image.Image, rng: np.random.Generator, share: tuple[float, float]
                 ) -> Image.Image:
    width, height = image.size
    w = int(width * rng.uniform(*share))
    h = int(height * rng.uniform(*share))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((x, y, x + w, y + h))


def make_photo(args: tuple[int, list[str], str]) -> str:
    """Generated image k (deterministic in k): see the module docstring."""
    k, sources, out = args
    path = Path(out)
    if path.exists():
        return out
    rng = np.random.default_rng(k)
    if k % PLANT_EVERY == PLANT_EVERY - 1:
        with Image.open(Path(out).with_name(f"{k - 1:06d}.jpg")) as original:
            image = original.convert("RGB")
        image = image.resize((int(image.width * 0.8), int(image.height * 0.8)), Image.LANCZOS)
        quality = 70
    else:
        base, inset = (sources[int(i)] for i in rng.integers(0, len(sources), 2))
        with Image.open(base) as a, Image.open(inset) as b:
            image = _random_crop(a.convert("RGB"), rng, (0.6, 0.95))
            patch = _random_crop(b.convert("RGB"), rng, (0.4, 0.8))
        width = int(rng.integers(256, 420))
        image = image.resize((width, int(width * rng.uniform(0.6, 0.8))), Image.BILINEAR)
        patch = patch.resize((image.width // 3, image.height // 3), Image.BILINEAR)
        image.paste(patch, (int(rng.integers(0, image.width - patch.width)),
                            int(rng.integers(0, image.height - patch.height))))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        quality = int(rng.integers(60, 95))
    tmp = path.with_suffix(".tmp")
    image.save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)
    return out


def build(data: Path, sources: list[str], size: int) -> Path:
    """The size-`size` dataset under data: made once, class folders of hard links."""
    pool = data / "images"
    pool.mkdir(parents=True, exist_ok=True)
    paths = [str(pool / f"{k:06d}.jpg") for k in range(size)]
    plain = [(k, sources, p) for k, p in enumerate(paths) if k % PLANT_EVERY != PLANT_EVERY - 1]
    planted = [(k, sources, p) for k, p in enumerate(paths) if k % PLANT_EVERY == PLANT_EVERY - 1]
    for batch, desc in ((plain, "generate"), (planted, "plant")):
        map_files(make_photo, [b for b in batch if not os.path.exists(b[2])], desc=desc)
    root = data / f"set-{size}"
    for k, path in enumerate(paths):
        link = root / f"c{k % CLASSES}" / f"{k:06d}.jpg" if k % PLANT_EVERY != PLANT_EVERY - 1 \
            else root / f"c{(k - 1) % CLASSES}" / f"{k:06d}.jpg"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)
    return root


def timed(args: list[str]) -> dict:
    """Run `curate ARGS --json -q`; seconds, its summary, and peak RSS of it and its children."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args, "--json", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_tree = peak_main = 0
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree]
            peak_tree, peak_main = max(peak_tree, sum(rss)), max(peak_main, rss[0])
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"curate {' '.join(args)} failed: {err[-2000:]}")
    return {"seconds": round(seconds, 1), "summary": json.loads(out),
            "peak_rss_mb": round(peak_tree / 2**20), "peak_main_rss_mb": round(peak_main / 2**20)}


def measure(root: Path, size: int, engine: str, work: Path) -> dict:
    """Scan then hash-only dedupe of root on a fresh workdir with one engine."""
    workdir = work / f"{engine}-{size}"
    steps = {}
    for step, extra in (("scan", []), ("dedupe", ["--embeddings", "off"])):   # hash-only
        run = timed([step, str(root), "--workdir", str(workdir), *extra, *ENGINES[engine]])
        steps[step] = {"seconds": run["seconds"], "images_per_second": round(size / run["seconds"], 1),
                       "peak_rss_mb": run["peak_rss_mb"], "peak_main_rss_mb": run["peak_main_rss_mb"]}
        if step == "dedupe":
            summary = run["summary"]
            steps[step].update(groups=summary["groups"], planted=size // PLANT_EVERY,
                               hash_seconds=summary["hash_seconds"],
                               group_seconds=summary["group_seconds"])
    steps["scan+dedupe_seconds"] = round(steps["scan"]["seconds"] + steps["dedupe"]["seconds"], 1)
    return steps


def measure_embed(root: Path, size: int, engine: str, work: Path, sizes: list[int]) -> dict:
    """`curate embed` (default engine, mirror views) of root after an untimed scan, and its time
    extrapolated per image to each of `sizes`."""
    workdir = work / f"embed-{engine}-{size}"
    timed(["scan", str(root), "--workdir", str(workdir)])
    run = timed(["embed", str(root), "--workdir", str(workdir), *ENGINES[engine]])
    per_image = run["seconds"] / size
    return {"seconds": run["seconds"], "images_per_second": round(size / run["seconds"], 1),
            "peak_rss_mb": run["peak_rss_mb"], "peak_main_rss_mb": run["peak_main_rss_mb"],
            "engine": run["summary"]["engine"], "computed": run["summary"]["computed"],
            "extrapolated_seconds": {s: round(per_image * s) for s in sizes}}


def growth(results: dict) -> dict:
    """Per engine: the time ratio of each size to the smallest, and the engine overhead."""
    sizes = sorted(results, key=int)
    out = {}
    for engine in ENGINES:
        base = results[sizes[0]][engine]["scan+dedupe_seconds"]
        out[engine] = {s: round(results[s][engine]["scan+dedupe_seconds"] / base, 2) for s in sizes}
    out["dask_local_over_pool"] = {s: round(results[s]["dask-local"]["scan+dedupe_seconds"]
                                            / results[s]["pool"]["scan+dedupe_seconds"], 3)
                                   for s in sizes}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000",
                        help="comma-separated dataset sizes (files)")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="where the generated photos are kept between runs")
    parser.add_argument("--sources", type=Path, default=None,
                        help="folder of photos to generate from (default: $CURATE_DATA)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="pool, dask-local")
    parser.add_argument("--embed-subset", type=int, default=5000,
                        help="files `curate embed` is timed on (0: no embed timing)")
    parser.add_argument("--build-only", action="store_true",
                        help="only generate the photos into --data-dir (a one-off job)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    engines = args.engines.split(",")
    sources = source_photos(args.sources or data_dir())
    if args.build_only:
        for size in sorted({*sizes, args.embed_subset} - {0}):
            build(args.data_dir, sources, size)
        return
    results, built = {}, {}
    for size in sizes:
        started = time.perf_counter()
        root = build(args.data_dir, sources, size)
        built[size] = round(time.perf_counter() - started, 1)
        with tempfile.TemporaryDirectory(prefix="scale-") as work:
            results[size] = {engine: measure(root, size, engine, Path(work)) for engine in engines}
            print(json.dumps({size: results[size]}), file=sys.stderr)
    embed = {}
    if args.embed_subset:
        root = build(args.data_dir, sources, args.embed_subset)
        with tempfile.TemporaryDirectory(prefix="scale-") as work:
            embed = {engine: measure_embed(root, args.embed_subset, engine, Path(work), sizes)
                     for engine in engines}
        print(json.dumps({"embed": embed}), file=sys.stderr)
    report = {"sizes": results, "embed": embed, "build_seconds": built,
              "machine": {"cores": os.cpu_count(), "load_before": load_before,
                          "python": platform.python_version()},
              "load_after": os.getloadavg()}
    if set(engines) == set(ENGINES):
        report["growth"] = growth(results)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
