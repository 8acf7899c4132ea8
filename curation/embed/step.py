"""`curate embed`: embed every readable image once (a duplicate shares its keeper's vector) into
the workdir's per-file cache, and record the run in runs/embed.json.

Steps that need embeddings call `dataset_embeddings` (flag-noise, with its own settings) or
`manifest_embeddings` (review's map, with the last embed run's): they read the cache and embed
only what is missing, so a cold cache is filled by the same code as this step.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import (ConfigError, DatasetConfig, check_root, validate_backbone,
                             validate_image_size)
from curation.embed.backbones import describe_weights
from curation.embed.cache import load_cached_embeddings
from curation.embed.compute import EmbeddingRun, EmbedSettings, embed_manifest
from curation.embed.engines import ENGINES
from curation.manifest import read_manifest, read_run, record_run, workdir_lock

REQUIRED_COLUMNS = ["path", "readable", "bytes", "mtime"]


def embed_settings(config: DatasetConfig, *, backbone: str | None = None,
                   weights: str | None = None, image_size: int | None = None,
                   **options) -> EmbedSettings:
    """EmbedSettings from datasets.yaml's backbone/weights/size and the overrides given, checked."""
    engine = options.get("engine")
    if engine is not None and engine not in ENGINES:
        raise ConfigError(f"--engine {engine}: unknown (choose from {', '.join(ENGINES)})")
    options = {k: v for k, v in options.items() if v is not None}
    return EmbedSettings(backbone=validate_backbone(backbone or config.backbone),
                         weights=str(weights or config.weights),
                         image_size=validate_image_size(image_size or config.image_size), **options)


def readable_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["readable"].astype(bool)].reset_index(drop=True)


def dataset_embeddings(config: DatasetConfig, workdir: Path, rows: pd.DataFrame,
                       settings: EmbedSettings, *, quiet: bool = False) -> EmbeddingRun:
    """Embeddings aligned with manifest `rows` (NaN where a file failed): read from the cache,
    the missing ones embedded now. Call with the workdir lock held.

    runs/embed.json is written when anything was embedded or the cache used changed, so a warm
    call leaves the embed step's record (and `curate run`'s view of it) untouched.
    """
    started = time.time()
    run = embed_manifest(rows, config.root, workdir, settings=settings, quiet=quiet)
    last = read_run(workdir, "embed")
    changed = not last or last["summary"]["cache_file"] != str(run.cache_file)
    if run.computed or run.failed or changed:
        record_run(workdir, "embed", settings=_recorded(settings),
                   summary=summarize(rows, run, time.time() - started), started=started)
    return run


def manifest_embeddings(config: DatasetConfig, workdir: Path, rows: pd.DataFrame, *,
                        quiet: bool = False) -> np.ndarray:
    """Vectors aligned with `rows` for steps that take whatever the embed step made (review's
    map): the last embed run's settings (else datasets.yaml's), the missing files embedded now.
    A workdir whose only cache is an older flag-noise's is read as it is. Hold the lock."""
    last = read_run(workdir, "embed")
    if last is None:
        legacy = load_cached_embeddings(workdir, rows)
        if legacy is not None:
            return legacy
    recorded = {k: v for k, v in (last or {}).get("settings", {}).items()
                if k in ("backbone", "weights", "image_size", "tta", "batch_size", "seed")}
    settings = embed_settings(config, **recorded)
    return dataset_embeddings(config, workdir, rows, settings, quiet=quiet).vectors


def embed(config: DatasetConfig, workdir: Path, *, settings: EmbedSettings,
          quiet: bool = False) -> dict:
    """The embed step: fill the cache for every readable manifest row; returns the summary."""
    started = time.time()
    check_root(config)
    with workdir_lock(Path(workdir)):
        rows = readable_rows(read_manifest(workdir, required=REQUIRED_COLUMNS))
        run = dataset_embeddings(config, workdir, rows, settings, quiet=quiet)
    return summarize(rows, run, time.time() - started)


def _recorded(settings: EmbedSettings) -> dict:
    return dict(dataclasses.asdict(settings), engine=settings.engine_name,
                weights_file=describe_weights(settings.backbone, settings.weights))


def summarize(rows: pd.DataFrame, run: EmbeddingRun, seconds: float) -> dict:
    """Counts (rows, unique files, embedded now, reused, failed), speed, engine, cache file."""
    embedded = ~np.isnan(run.vectors).any(axis=1) if run.vectors.size else np.zeros(len(rows), bool)
    return {"images": int(len(rows)), "with_vector": int(embedded.sum()),
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
