"""Image embeddings from an ImageNet backbone, cached per file in the workdir.

The cache `<workdir>/embeddings/<backbone>_<size>_<weights-tag>[_tta].npz` is keyed by
path + bytes + mtime, so a re-run only embeds new or changed files; it is checkpointed while
embedding, so an interrupted run resumes. With test-time augmentation (default) each vector
is the mean over the image and its mirror image.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from curation.embed.backbones import build_backbone, preprocess, resolve_weights
from curation.images import ImageError, load_array
from curation.manifest import atomic_write, file_identity, read_run
from curation.parallel import progress_bar

CACHE_DIR = "embeddings"
CHECKPOINT_SECONDS = 60.0


@dataclass
class EmbeddingRun:
    """Vectors aligned with the requested rows (NaN rows where a file failed) and run figures."""

    vectors: np.ndarray
    cache_file: Path
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return round(self.computed / self.seconds, 1) if self.computed and self.seconds else None


def weights_tag(backbone: str, weights: str | None) -> str:
    """'imagenet', 'none', or a weights file's stem plus a short content hash."""
    resolved = resolve_weights(backbone, weights)
    if resolved is None:
        return "none"
    if resolved == "imagenet" or str(weights) == "imagenet":
        return "imagenet"
    digest = hashlib.sha256(Path(resolved).read_bytes()).hexdigest()[:8]
    return f"{Path(resolved).name.split('.')[0]}-{digest}"


def cache_file(workdir: Path, backbone: str, image_size: int, weights: str | None,
               tta: bool = True) -> Path:
    name = f"{backbone}_{image_size}_{weights_tag(backbone, weights)}{'_tta' if tta else ''}.npz"
    return Path(workdir) / CACHE_DIR / name


def read_cache(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Cached identities (path, bytes, mtime) and their vectors, row for row."""
    if not Path(path).exists():
        return pd.DataFrame({"path": [], "bytes": [], "mtime": []}), np.zeros((0, 0), np.float32)
    with np.load(path, allow_pickle=False) as data:
        keys = pd.DataFrame({"path": data["paths"].astype(str), "bytes": data["bytes"],
                             "mtime": data["mtime"]})
        return keys, data["vectors"]


def write_cache(path: Path, keys: pd.DataFrame, vectors: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, paths=keys["path"].to_numpy(dtype=str),
                     bytes=keys["bytes"].to_numpy(np.int64),
                     mtime=keys["mtime"].to_numpy(np.float64),
                     vectors=vectors.astype(np.float32))

    atomic_write(path, write)


def _load(path: Path, size: int) -> np.ndarray | str:
    try:
        return load_array(path, size)
    except (ImageError, OSError) as exc:
        return str(exc)[:200]


def _batches(paths: list[Path], size: int, batch_size: int, loaders: int | None = None,
             prefetch: int = 2) -> Iterator[list]:
    """Decoded batches; the next ones load in threads while the model runs on this one."""
    with ThreadPoolExecutor(max_workers=loaders or min(4, os.cpu_count() or 1)) as pool:
        queue: deque[list] = deque()
        for start in range(0, len(paths), batch_size):
            queue.append([pool.submit(_load, p, size) for p in paths[start:start + batch_size]])
            if len(queue) > prefetch:
                yield [job.result() for job in queue.popleft()]
        while queue:
            yield [job.result() for job in queue.popleft()]


@functools.lru_cache(maxsize=2)
def _model(backbone: str, weights: str | None, image_size: int, seed: int):
    """The backbone, built once per process for these settings (the seed only matters for none)."""
    import keras

    keras.utils.set_random_seed(seed)
    return build_backbone(backbone, weights, image_size)


def embed_batch(model, backbone: str, images: np.ndarray, *, tta: bool = True,
                pad_to: int = 0) -> np.ndarray:
    """Pooled features of a uint8 (n, h, w, 3) batch; with tta, averaged with the mirror images.

    A short batch is padded to `pad_to` so the compiled predict function is traced only once.
    """
    count = len(images)
    if count < pad_to:
        images = np.concatenate([images, np.repeat(images[-1:], pad_to - count, axis=0)])
    views = np.concatenate([images, images[:, :, ::-1]]) if tta else images
    features = np.asarray(model.predict_on_batch(preprocess(backbone, views)), dtype=np.float32)
    if tta:
        features = (features[:len(images)] + features[len(images):]) / 2
    return features[:count]


def embed_files(files: Sequence[str], workdir: Path, *, root: Path | None = None,
                backbone: str = "mobilenet_v2", weights: str | None = "imagenet",
                image_size: int = 224, batch_size: int = 32, tta: bool = True,
                seed: int = 0, loaders: int | None = None, quiet: bool = False) -> EmbeddingRun:
    """Embed files (relative to root, or absolute), reusing the workdir cache; one row per file."""
    started = time.time()
    path = cache_file(workdir, backbone, image_size, weights, tta)
    keys, vectors = read_cache(path)
    wanted = file_identity(list(files), root)
    cached = wanted.reset_index().merge(keys.reset_index(names="row"),
                                        on=["path", "bytes", "mtime"], how="inner")
    todo = sorted(set(wanted["path"]) - set(cached["path"]))
    new_keys, new_vectors, failed = [], [], {}
    if todo:
        model = _model(backbone, weights, image_size, seed)
        identity = wanted.drop_duplicates("path").set_index("path")
        bar = progress_bar(total=len(todo), desc="embed", unit="img", quiet=quiet)
        last_save = time.time()
        absolute = [Path(root) / p if root else Path(p) for p in todo]
        for start, batch in zip(range(0, len(todo), batch_size),
                                _batches(absolute, image_size, batch_size, loaders)):
            names = todo[start:start + batch_size]
            good = [(n, a) for n, a in zip(names, batch) if not isinstance(a, str)]
            failed.update({n: a for n, a in zip(names, batch) if isinstance(a, str)})
            if good:
                new_vectors.append(embed_batch(model, backbone, np.stack([a for _, a in good]),
                                               tta=tta, pad_to=batch_size))
                new_keys.extend((n, int(identity.at[n, "bytes"]), float(identity.at[n, "mtime"]))
                                for n, _ in good)
            bar.update(len(names))
            if time.time() - last_save > CHECKPOINT_SECONDS:
                keys, vectors = _merge(keys, vectors, new_keys, new_vectors)
                new_keys, new_vectors = [], []
                write_cache(path, keys, vectors)
                last_save = time.time()
        bar.close()
        keys, vectors = _merge(keys, vectors, new_keys, new_vectors)
        write_cache(path, keys, vectors)
    out = _aligned(wanted, keys, vectors)
    return EmbeddingRun(out, path, computed=len(todo) - len(failed), reused=len(cached),
                        seconds=time.time() - started, failed=failed)


def _merge(keys: pd.DataFrame, vectors: np.ndarray, new_keys: list, new_vectors: list):
    """Cache rows plus new ones; a new row replaces an older row for the same path."""
    if not new_keys:
        return keys, vectors
    fresh = pd.DataFrame(new_keys, columns=["path", "bytes", "mtime"])
    stacked = np.concatenate(new_vectors)
    keep = ~keys["path"].isin(fresh["path"]).to_numpy()
    if len(vectors) == 0:
        return fresh, stacked
    return (pd.concat([keys[keep], fresh], ignore_index=True),
            np.concatenate([vectors[keep], stacked]))


def _aligned(wanted: pd.DataFrame, keys: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
    """Vectors for `wanted` rows matched on path+bytes+mtime; NaN rows where none is cached."""
    width = vectors.shape[1] if vectors.ndim == 2 and len(vectors) else 0
    out = np.full((len(wanted), width), np.nan, dtype=np.float32)
    match = wanted.reset_index(names="at").merge(keys.reset_index(names="row"),
                                                 on=["path", "bytes", "mtime"], how="inner")
    out[match["at"].to_numpy()] = vectors[match["row"].to_numpy()]
    return out


def representatives(manifest: pd.DataFrame) -> pd.Series:
    """For each row, the path whose embedding stands for it: its duplicate keeper, else itself.

    Duplicate groups (dedupe's dup_of) and byte-identical files (scan's sha256) embed once.
    """
    rep = manifest["path"].astype(str)
    if "sha256" in manifest.columns:
        first = manifest.groupby("sha256", dropna=True)["path"].transform("first")
        rep = first.where(manifest["sha256"].notna(), rep).astype(str)
    if "dup_of" in manifest.columns:
        rep = manifest["dup_of"].where(manifest["dup_of"].notna(), rep).astype(str)
    return rep


def embed_manifest(manifest: pd.DataFrame, root: Path, workdir: Path, *,
                   backbone: str = "mobilenet_v2", weights: str | None = "imagenet",
                   image_size: int = 224, batch_size: int = 32, tta: bool = True,
                   seed: int = 0, loaders: int | None = None, quiet: bool = False) -> EmbeddingRun:
    """Embeddings aligned with the manifest rows; duplicates reuse their keeper's vector."""
    rep = representatives(manifest)
    unique = sorted(set(rep))
    run = embed_files(unique, workdir, root=root, backbone=backbone, weights=weights,
                      image_size=image_size, batch_size=batch_size, tta=tta, seed=seed,
                      loaders=loaders, quiet=quiet)
    position = {p: i for i, p in enumerate(unique)}
    run.vectors = run.vectors[[position[p] for p in rep]]
    return run


def load_cached_embeddings(workdir: Path, manifest: pd.DataFrame,
                           cache: Path | None = None) -> np.ndarray | None:
    """Cached embeddings aligned with manifest rows (NaN where missing), without loading a model.

    Uses the cache file of the last flag-noise run (or `cache`); None when there is none.
    For the review step's 2-D map and the report.
    """
    if cache is None:
        run = read_run(workdir, "flag-noise")
        cache = Path(run["summary"]["embeddings"]["cache_file"]) if run else None
    if cache is None or not Path(cache).exists():
        return None
    keys, vectors = read_cache(cache)
    rep = representatives(manifest).to_numpy()
    identity = manifest.set_index(manifest["path"].astype(str))[["bytes", "mtime"]]
    wanted = pd.DataFrame({"path": rep})
    wanted = wanted.join(identity, on="path")
    return _aligned(wanted, keys, vectors)
