"""Embedding on a Dask cluster: each worker decodes AND embeds whole partitions of files (a few
hundred each), with its engine built once per worker process, so only file names go out and
vectors come back, never pixels. The client merges partitions into the cache as they finish.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from curation import cluster
from curation.embed.backbones import resolve_weights
from curation.embed.engines import embed_views, get_engine, prepare
from curation.embed.pipeline import decode_batch


@dataclass
class Embedded:
    """Some files embedded: the decoded ones' names and vectors in order, why the others failed."""

    names: list[str]
    vectors: np.ndarray | None       # (len(names), d); None when no file decoded
    failed: dict[str, str]
    files: int                       # every file tried, decoded or not
    engine: str


@dataclass(frozen=True)
class Recipe:
    """What a worker needs to build the engine and run it (weights resolved by the client, so
    every worker loads the same file: the same mount, like the images)."""

    engine: str
    backbone: str
    weights: str | None
    image_size: int
    seed: int
    tta: bool
    batch_size: int


def embed_partition(job: list[tuple[str, str]], recipe: Recipe) -> Embedded:
    """One Dask task: decode and embed (name, absolute path) pairs in batches, one engine thread
    (the worker's siblings fill the other cores); the engine is cached per worker process."""
    r = recipe
    engine = get_engine(r.engine, r.backbone, r.weights, r.image_size, r.seed, threads=1)
    names, paths = [name for name, _ in job], [path for _, path in job]
    decoded, vectors, failed = [], [], {}
    for start in range(0, len(names), r.batch_size):
        batch = decode_batch((names[start:start + r.batch_size],
                              paths[start:start + r.batch_size], r.image_size))
        failed.update(batch.failed)
        if batch.decoded:
            decoded += batch.decoded
            vectors.append(embed_views(engine, batch.pixels, tta=r.tta))
    return Embedded(decoded, np.concatenate(vectors) if vectors else None, failed, len(names),
                    engine.name)


def embed_on_dask(client, names: Sequence[str], paths: Sequence[str], settings
                  ) -> Iterator[Embedded]:
    """Partitions of files embedded on the client's workers, yielded as they finish."""
    s = settings
    weights = resolve_weights(s.backbone, s.weights)
    prepare(s.engine_name, s.backbone, weights, s.image_size, s.seed)
    recipe = Recipe(s.engine_name, s.backbone, weights, s.image_size, s.seed, s.tta,
                    s.batch_size)
    jobs = cluster.split(client, list(zip(names, map(str, paths))), cluster.EMBED_PARTITION)
    for _, embedded in cluster.as_done(client, functools.partial(embed_partition, recipe=recipe),
                                       jobs):
        yield embedded
