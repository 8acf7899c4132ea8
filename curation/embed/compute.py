"""Embed files through the cache: reuse what is cached, decode and embed the rest, checkpointing.

With test-time augmentation (default) each vector is the mean over the image and its mirror image.
"""
from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from curation.embed.cache import (aligned, cache_file, merge, read_cache, representatives,
                                  write_cache, write_checkpoint)
from curation.config import BACKBONES
from curation import cluster
from curation.embed.engines import (ENGINES, decode_workers, default_engine, embed_views,
                                     get_engine)
from curation.embed.on_dask import Embedded, embed_on_dask
from curation.embed.pipeline import Batch, decoded_batches
from curation.manifest import IDENTITY_COLUMNS, file_identity
from curation.parallel import progress_bar
from curation.cluster import cluster_setting
from curation.settings import setting

CHECKPOINT_IMAGES = 512   # a killed run loses at most this many embedded images


@dataclass(frozen=True)
class EmbedSettings:
    """What an embedding is made with (backbone, weights, size and mirror view key the cache)
    and how it is run. None: datasets.yaml's value (curation.settings.resolve fills it)."""

    backbone: str | None = setting(None, "Embedding backbone [default: datasets.yaml].",
                                   choices=BACKBONES, config="backbone")
    weights: str | None = setting(None, "imagenet (a file from $CURATE_WEIGHTS, else Keras "
                                  "downloads it), a no-top weights file, or none "
                                  "[default: datasets.yaml].", config="weights", kind=str)
    image_size: int | None = setting(None, "Square input size in pixels [default: datasets.yaml].",
                                     kind=int, low=32, high=1024, config="image_size")
    tta: bool = setting(True, "Average each embedding with its mirror image's (2x the work, "
                        "finds more).")
    engine: str | None = setting(None, "onnx: ONNX Runtime on the CPU, the backbone exported "
                                 "once into ~/.cache/curate (default when onnxruntime is "
                                 "installed); keras: the Keras model (the reference; GPUs).",
                                 choices=ENGINES, result=False)
    batch_size: int = setting(32, "Images per embedding batch.", low=1, high=1024,
                              result=False, run_flag="--embed-batch-size")
    workers: int | None = setting(None, "Image-decoding processes (default: a quarter of the "
                                  "cores with onnx, which needs them for inference; all with "
                                  "keras), or with --cluster local the Dask workers (default: "
                                  "cores).", kind=int, low=1, high=256, result=False)
    cluster: str | None = cluster_setting()
    seed: int = setting(0, "Random seed: same seed, same result (embeddings: random-init "
                        "weights only).")

    @property
    def engine_name(self) -> str:
        return self.engine or default_engine()


@dataclass
class EmbeddingRun:
    """Vectors aligned with the requested rows (NaN rows where a file failed) and run figures."""

    vectors: np.ndarray
    cache_file: Path
    engine: str | None               # None when nothing had to be embedded
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return round(self.computed / self.seconds, 1) if self.computed and self.seconds else None


def embed_files(files: Sequence[str], workdir: Path, *, root: Path | None = None,
                settings: EmbedSettings, quiet: bool = False,
                checkpoint_every: int = CHECKPOINT_IMAGES) -> EmbeddingRun:
    """Embed files (relative to root, or absolute), reusing the workdir cache; one row per file.
    `settings` must be resolved (no None backbone, weights or image size)."""
    started = time.time()
    s = settings
    path = cache_file(workdir, s.backbone, s.image_size, s.weights, s.tta)
    keys, vectors = read_cache(path)
    wanted = file_identity(list(files), root)
    cached = wanted.merge(keys, on=IDENTITY_COLUMNS, how="inner")
    todo = sorted(set(wanted["path"]) - set(cached["path"]))
    failed: dict[str, str] = {}
    engine_name = None
    if todo:
        identity = wanted.drop_duplicates("path").set_index("path")
        paths = [Path(root) / p if root else Path(p) for p in todo]
        client = cluster.active()
        chunks = embed_on_dask(client, todo, paths, s) if client else _embed_here(todo, paths, s)
        bar = None
        done, pending = [], []          # (names, vectors) of this run; not yet checkpointed
        for chunk in chunks:            # merged into the cache as each batch/partition finishes
            engine_name = chunk.engine
            bar = bar or progress_bar(total=len(todo), desc=f"embed ({chunk.engine})",
                                      unit="img", quiet=quiet)
            failed.update(chunk.failed)
            if chunk.names:
                pending.append((chunk.names, chunk.vectors))
            bar.update(chunk.files)
            if sum(len(names) for names, _ in pending) >= checkpoint_every:
                write_checkpoint(path, *_rows(pending, identity))
                done.extend(pending)
                pending = []
        if bar is not None:
            bar.close()
        keys, vectors = merge(keys, vectors, *_rows(done + pending, identity))
        write_cache(path, keys, vectors)
    return EmbeddingRun(aligned(wanted, keys, vectors), path, engine_name,
                        computed=len(todo) - len(failed), reused=len(cached),
                        seconds=time.time() - started, failed=failed)


def _embed_here(todo: list[str], paths: list[Path], s: EmbedSettings) -> Iterator[Embedded]:
    """Batches embedded in this process, decoded ahead by worker processes (pipeline.py)."""
    batches = decoded_batches(todo, paths, s.image_size, s.batch_size,
                              workers=s.workers or decode_workers(s.engine_name))
    first = next(batches)   # decoding starts before the model loads, and overlaps it
    engine = get_engine(s.engine_name, s.backbone, s.weights, s.image_size, s.seed)
    views = functools.partial(embed_views, engine, tta=s.tta)
    for batch, vectors in overlapped(views, itertools.chain([first], batches),
                                     depth=2 if engine.name == "onnx" else 1):
        yield Embedded(batch.decoded, vectors, batch.failed, len(batch.names), engine.name)


def overlapped(views: Callable[[np.ndarray], np.ndarray], batches: Iterator[Batch], *,
               depth: int) -> Iterator[tuple[Batch, np.ndarray | None]]:
    """(batch, its features) in order, with up to `depth` batches running at once: onnx's
    threads then move on to the next batch instead of waiting at the end of each for the
    slowest slice (a decoder shares their cores), ~8 % more images/s on 2 cores."""
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="embed") as runner:
        running: deque = deque()
        for batch in batches:
            running.append((batch, runner.submit(views, batch.pixels) if batch.decoded else None))
            if len(running) >= depth:
                batch, future = running.popleft()
                yield batch, future and future.result()
        while running:
            batch, future = running.popleft()
            yield batch, future and future.result()


def _rows(embedded: list[tuple[list[str], np.ndarray]],
          identity: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Cache keys (path, bytes, mtime) and stacked vectors of (names, vectors) pairs, in path
    order (so the cache file is the same whichever order batches or partitions finished in)."""
    names = [name for batch, _ in embedded for name in batch]
    keys = identity.loc[names, ["bytes", "mtime"]].reset_index(names="path")
    width = embedded[0][1].shape[1] if embedded else 0
    vectors = np.concatenate([v for _, v in embedded]) if embedded else np.zeros((0, width))
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    return (keys[IDENTITY_COLUMNS].iloc[order].reset_index(drop=True),
            vectors[order].astype(np.float32))


def embed_manifest(manifest: pd.DataFrame, root: Path, workdir: Path, *,
                   settings: EmbedSettings, quiet: bool = False,
                   checkpoint_every: int = CHECKPOINT_IMAGES) -> EmbeddingRun:
    """Embeddings aligned with the manifest rows; duplicates reuse their keeper's vector."""
    rep = representatives(manifest)
    unique = sorted(set(rep))
    run = embed_files(unique, workdir, root=root, settings=settings, quiet=quiet,
                      checkpoint_every=checkpoint_every)
    position = {p: i for i, p in enumerate(unique)}
    run.vectors = run.vectors[[position[p] for p in rep]]
    return run
