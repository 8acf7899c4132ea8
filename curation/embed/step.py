"""`curate embed`: embed every readable image once (a duplicate shares its keeper's vector) into
the workdir's per-file cache.

Steps that need embeddings call `ensure_embeddings` (flag-noise, with its own settings) or
`manifest_embeddings` (review's map, with the last embed run's): they read the cache and embed
only what is missing, with the same code as this step, and record an embed run when they did.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import DatasetConfig, check_root
from curation.embed.cache import load_cached_embeddings
from curation.embed.compute import EmbeddingRun, EmbedSettings, embed_manifest
from curation.manifest import read_run
from curation.steps import Step, Workdir, resolve_settings, run_step

Settings = EmbedSettings


def readable_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["readable"].astype(bool)].reset_index(drop=True)


def run(work: Workdir, settings: Settings) -> dict:
    """Fill the cache for every readable manifest row; returns the summary."""
    check_root(work.config)
    rows = readable_rows(work.read())
    embedded = embed_manifest(rows, work.root, work.path.resolve(), settings=settings,
                              quiet=work.quiet)
    return summarize(rows, embedded, time.time() - work.started)


def ensure_embeddings(work: Workdir, rows: pd.DataFrame, settings: Settings) -> EmbeddingRun:
    """Embeddings aligned with manifest `rows` (NaN where a file failed): read from the cache,
    the missing ones embedded now, inside another step's run (its lock held). An embed run is
    recorded only when something was embedded or the cache changed, so a warm call leaves the
    embed step's record, and `curate run`'s view of it, untouched."""
    started = time.time()
    embedded = embed_manifest(rows, work.root, work.path.resolve(), settings=settings,
                              quiet=work.quiet)
    last = read_run(work.path, STEP.name)
    changed = not last or last["summary"].get("cache_file") != str(embedded.cache_file)
    if embedded.computed or embedded.failed or changed:
        Workdir(work.path, work.config, STEP, quiet=work.quiet).record(
            settings, summarize(rows, embedded, time.time() - started))
    return embedded


def manifest_embeddings(work: Workdir, rows: pd.DataFrame) -> np.ndarray:
    """Vectors aligned with `rows` for a step that takes whatever the embed step made (review's
    map): the last embed run's settings (else the defaults), missing files embedded now. A
    workdir whose only cache is an older flag-noise's is read as it is."""
    last = read_run(work.path, STEP.name)
    if last is None:
        legacy = load_cached_embeddings(work.path, rows)
        if legacy is not None:
            return legacy
    recorded = {k: v for k, v in ((last or {}).get("settings") or {}).items()
                if k in ("backbone", "weights", "image_size", "tta", "seed")}
    settings = resolve_settings(STEP, work.config, recorded)
    return ensure_embeddings(work, rows, settings).vectors


def embed(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate embed` as a function: see Settings (curation.embed.compute.EmbedSettings)."""
    return run_step(STEP, config, workdir, quiet=quiet, **settings)


def summarize(rows: pd.DataFrame, run: EmbeddingRun, seconds: float) -> dict:
    """Counts (rows, unique files, embedded now, reused, failed), speed, engine, cache file."""
    found = ~np.isnan(run.vectors).any(axis=1) if run.vectors.size else np.zeros(len(rows), bool)
    return {"images": int(len(rows)), "with_vector": int(found.sum()),
            "unique_files": run.computed + run.reused + len(run.failed),
            "computed": run.computed, "reused": run.reused,
            "failed": dict(sorted(run.failed.items())), "engine": run.engine,
            "images_per_second": run.images_per_second, "cache_file": str(run.cache_file),
            "dimensions": int(run.vectors.shape[1]) if run.vectors.ndim == 2 else 0,
            "seconds": round(seconds, 2)}


def describe(summary: dict) -> str:
    """A short human summary of an embed run."""
    if summary["computed"] == 0 and not summary["failed"]:
        lines = [f"All {summary['unique_files']} files were already embedded; nothing to do "
                 f"({summary['images']} images, cache {summary['cache_file']})."]
    else:
        speed = f" at {summary['images_per_second']} img/s" if summary["images_per_second"] else ""
        lines = [f"Embedded {summary['computed']} files{speed} with the {summary['engine']} "
                 f"engine, reused {summary['reused']} cached; {summary['with_vector']} of "
                 f"{summary['images']} images have a {summary['dimensions']}-d vector.",
                 f"Cache: {summary['cache_file']} ({summary['seconds']} s)."]
    lines += [f"  could not embed {path}: {why}" for path, why in summary["failed"].items()]
    return "\n".join(lines)


HELP = """Embed every readable image into the per-file cache that flag-noise and review use.

\b
Example: curate embed stanford-cars-25
         curate embed ~/photos/cars --engine keras --no-tta
         curate embed ~/photos/cars --cluster local   (or tcp://HOST:8786: Dask, docs/scale.md)
Vectors are cached in <workdir>/embeddings, keyed by path, size, mtime, backbone, weights,
image size and mirror view; a re-run embeds only new or changed files, and an interrupted run
resumes from its last checkpoint (every 512 images). Duplicates are embedded once. Files are
never changed.
"""

STEP = Step("embed", Settings, run, describe, help=HELP,
            needs=("path", "readable", "bytes", "mtime"), uses=("sha256", "dup_of"))
