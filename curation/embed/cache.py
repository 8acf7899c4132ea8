"""The per-file embedding cache in the workdir: keys, reading, checkpoints, alignment.

`<workdir>/embeddings/<backbone>_<size>_<weights-tag>[_tta].npz` holds one vector per file,
keyed by path + bytes + mtime (and the decoder's version), so a re-run only embeds new or
changed files. While a run embeds, every few hundred new vectors are written as a numbered part
beside it (`<name>.parts/000001.npz`, atomically), so a killed run loses at most one
checkpoint's worth; the end of a run folds the parts into the main file.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from curation.embed.backbones import resolve_weights
from curation.images import DECODE_VERSION
from curation.manifest import IDENTITY_COLUMNS, atomic_write, read_run

CACHE_DIR = "embeddings"


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


def parts_dir(path: Path) -> Path:
    """The folder of checkpoint parts not yet folded into the cache file `path`."""
    return Path(path).with_suffix(".parts")


def checkpoint_parts(path: Path) -> list[Path]:
    """The finished checkpoint parts of the cache file `path`, oldest first (a part a killed run
    was still writing is a hidden temp file, not listed)."""
    return sorted(p for p in parts_dir(path).glob("*.npz") if p.stem.isdigit())


def _empty() -> tuple[pd.DataFrame, np.ndarray]:
    return pd.DataFrame({"path": [], "bytes": [], "mtime": []}), np.zeros((0, 0), np.float32)


def _read_npz(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A cache file's rows; none when images.load_array decoded differently when it was written
    (vectors of the old pixels)."""
    with np.load(path, allow_pickle=False) as data:
        if "decoder" not in data or int(data["decoder"]) != DECODE_VERSION:
            return _empty()
        keys = pd.DataFrame({"path": data["paths"].astype(str), "bytes": data["bytes"],
                             "mtime": data["mtime"]})
        return keys, data["vectors"]


def _write_npz(path: Path, keys: pd.DataFrame, vectors: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, paths=keys["path"].to_numpy(dtype=str),
                     bytes=keys["bytes"].to_numpy(np.int64),
                     mtime=keys["mtime"].to_numpy(np.float64),
                     vectors=vectors.astype(np.float32), decoder=np.int64(DECODE_VERSION))

    return atomic_write(path, write)


def read_cache(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Cached identities (path, bytes, mtime) and their vectors, row for row: the cache file
    and then its checkpoint parts, a later row replacing an earlier one for the same path."""
    keys, vectors = _read_npz(path) if Path(path).exists() else _empty()
    for part in checkpoint_parts(path):
        keys, vectors = merge(keys, vectors, *_read_npz(part))
    return keys, vectors


def write_checkpoint(path: Path, keys: pd.DataFrame, vectors: np.ndarray) -> Path:
    """Save new rows as the next checkpoint part of the cache file `path` (writes only them)."""
    numbers = [int(p.stem) for p in checkpoint_parts(path)]
    return _write_npz(parts_dir(path) / f"{max(numbers, default=0) + 1:06d}.npz", keys, vectors)


def write_cache(path: Path, keys: pd.DataFrame, vectors: np.ndarray) -> None:
    """Replace the cache file with these rows, then drop the parts they include (and any part
    a killed run left half-written)."""
    _write_npz(path, keys, vectors)
    for part in parts_dir(path).glob("*"):
        part.unlink()
    with contextlib.suppress(OSError):
        parts_dir(path).rmdir()


def merge(keys: pd.DataFrame, vectors: np.ndarray, new_keys: pd.DataFrame,
          new_vectors: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Cache rows plus new ones; a new row replaces an older row for the same path."""
    if not len(new_keys):
        return keys, vectors
    if not len(keys):
        return new_keys.reset_index(drop=True), new_vectors
    keep = ~keys["path"].isin(new_keys["path"]).to_numpy()
    return (pd.concat([keys[keep], new_keys], ignore_index=True),
            np.concatenate([vectors[keep], new_vectors]))


def aligned(wanted: pd.DataFrame, keys: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
    """Vectors for `wanted` rows matched on path+bytes+mtime; NaN rows where none is cached."""
    width = vectors.shape[1] if vectors.ndim == 2 and len(vectors) else 0
    out = np.full((len(wanted), width), np.nan, dtype=np.float32)
    match = wanted.reset_index(names="at").merge(keys.reset_index(names="row"),
                                                 on=IDENTITY_COLUMNS, how="inner")
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


def last_cache_file(workdir: Path) -> Path | None:
    """The cache file the last embed step wrote (or, for older workdirs, flag-noise's)."""
    for step, key in (("embed", ("cache_file",)), ("flag-noise", ("embeddings", "cache_file"))):
        run = read_run(workdir, step)
        if run:
            value = run["summary"]
            for name in key:
                value = value[name]
            return Path(value)
    return None


def load_cached_embeddings(workdir: Path, manifest: pd.DataFrame,
                           cache: Path | None = None) -> np.ndarray | None:
    """Cached embeddings aligned with manifest rows (NaN where missing), without loading a model.

    Uses the cache file of the last embed run (or `cache`); None when there is none.
    """
    cache = cache or last_cache_file(workdir)
    if cache is None or not (Path(cache).exists() or parts_dir(cache).exists()):
        return None
    keys, vectors = read_cache(cache)
    rep = representatives(manifest).to_numpy()
    identity = manifest.set_index(manifest["path"].astype(str))[["bytes", "mtime"]]
    wanted = pd.DataFrame({"path": rep}).join(identity, on="path")
    return aligned(wanted, keys, vectors)
