"""Training data: the manifest's split rows, a decode-once pixel cache, and a batch pipeline.

Each image is decoded and resized once into a uint8 memmap under <workdir>/cache/ (keyed by
path, bytes, mtime and size), so every epoch only gathers arrays; batches come from a
keras.utils.PyDataset, which runs with the TensorFlow, JAX and PyTorch backends alike.
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from curation.images import DECODE_VERSION, ImageError, load_array
from curation.manifest import IDENTITY_COLUMNS, ManifestMissing, atomic_write, unchanged_rows
from curation.parallel import map_files
from curation.vocabulary import SPLITS



def label_series(manifest: pd.DataFrame) -> pd.Series:
    """The label to train on: `split_label` (the split step's, review relabels applied), else `label`."""
    column = "split_label" if "split_label" in manifest.columns else "label"
    return manifest[column].astype("object").where(manifest[column].notna(), None)


def split_rows(manifest: pd.DataFrame, splits=SPLITS) -> pd.DataFrame:
    """Readable, labelled rows whose `split` is one of `splits`: path, label, split, bytes, mtime."""
    if "split" not in manifest.columns:
        raise ManifestMissing("the manifest has no 'split' column: run `curate split` first")
    rows = manifest.assign(target=label_series(manifest))
    keep = rows["split"].isin(list(splits)) & rows["target"].notna()
    if "readable" in rows.columns:
        keep &= rows["readable"].fillna(False).astype(bool)
    rows = rows.loc[keep, ["path", "target", "split", "bytes", "mtime"]]
    return rows.rename(columns={"target": "label"}).reset_index(drop=True)


def encode_labels(labels, classes) -> np.ndarray:
    """Class indices for labels; -1 where a label is not among `classes`."""
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup.get(label, -1) for label in labels], dtype=np.int64)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k * count): rare classes count as much as common ones."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def decode_file(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """(uint8 pixels, None) for (path, size), or (None, why) when the file cannot be decoded."""
    path, size = args
    try:
        return load_array(Path(path), size), None
    except ImageError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def cache_paths(cache_dir: Path, size: int) -> tuple[Path, Path]:
    """The pixel array and its index (path, bytes, mtime, slot) for one image size."""
    stem = Path(cache_dir) / f"pixels-v{DECODE_VERSION}-{size}"
    return stem.with_suffix(".npy"), stem.with_suffix(".parquet")


def _read_cache(cache_dir: Path, size: int) -> tuple[pd.DataFrame, np.ndarray | None]:
    array_path, index_path = cache_paths(cache_dir, size)
    empty = pd.DataFrame({"path": pd.Series(dtype="string"), "bytes": pd.Series(dtype="int64"),
                          "mtime": pd.Series(dtype="float64"), "slot": pd.Series(dtype="int64")})
    if not (array_path.exists() and index_path.exists()):
        return empty, None
    pixels = np.load(array_path, mmap_mode="r")
    index = pd.read_parquet(index_path)
    if "array" not in index.columns or set(index["array"]) != {_stamp(array_path)}:
        return empty, None   # a run killed between the two renames: the pair does not match
    return (index.drop(columns="array"), pixels) if len(index) == len(pixels) else (empty, None)


def _stamp(path: Path) -> str:
    """Which version of the array file this is (inode and mtime): the index names the one it indexes."""
    info = path.stat()
    return f"{info.st_ino}:{info.st_mtime_ns}"


def _write_cache(cache_dir: Path, size: int, kept: pd.DataFrame, old_pixels: np.ndarray | None,
                 added: pd.DataFrame, arrays: list[np.ndarray]) -> None:
    """Kept old images plus new ones into a fresh memmap written beside the old one, then renamed."""
    array_path, index_path = cache_paths(cache_dir, size)
    total = len(kept) + len(arrays)

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, size, size, 3))
        slots = kept["slot"].to_numpy(dtype=np.int64)
        for start in range(0, len(slots), 256):
            chunk = slots[start:start + 256]
            out[start:start + len(chunk)] = old_pixels[chunk]
        for offset, array in enumerate(arrays):
            out[len(kept) + offset] = array
        out.flush()

    index = pd.concat([kept[IDENTITY_COLUMNS], added[IDENTITY_COLUMNS]], ignore_index=True)
    index["slot"] = np.arange(total)
    atomic_write(array_path, write)
    index["array"] = _stamp(array_path)
    atomic_write(index_path, lambda tmp: index.to_parquet(tmp, index=False))


def load_pixels(rows: pd.DataFrame, root: Path, size: int, cache_dir: Path, *,
                workers: int | None = None, quiet: bool = False
                ) -> tuple[np.ndarray, pd.DataFrame, list[tuple[str, str]]]:
    """Pixels (n, size, size, 3) uint8 for rows, decoding only files the cache lacks.

    Returns the cached pixel array (a read-only memmap), the rows that decoded with their
    `slot` in it (same order as rows), and (path, reason) for files left out as undecodable.
    """
    identity = rows[IDENTITY_COLUMNS].drop_duplicates("path")
    index, pixels = _read_cache(cache_dir, size)
    cached = unchanged_rows(index, identity, ["slot"])
    todo = identity[~identity["path"].isin(cached["path"])].reset_index(drop=True)
    failures: list[tuple[str, str]] = []
    if len(todo):
        decoded = map_files(decode_file, [(str(Path(root) / p), size) for p in todo["path"]],
                            workers=workers, desc=f"decode {size}px", quiet=quiet)
        good = [i for i, (array, _) in enumerate(decoded) if array is not None]
        failures = [(todo["path"][i], error) for i, (_, error) in enumerate(decoded) if error]
        kept = index[~index["path"].isin(todo["path"])]
        _write_cache(cache_dir, size, kept, pixels, todo.iloc[good], [decoded[i][0] for i in good])
        index, pixels = _read_cache(cache_dir, size)
    for path, reason in failures:
        print(f"warning: {path}: {reason} (left out)", file=sys.stderr)
    located = rows.merge(index, on=IDENTITY_COLUMNS, how="inner").reset_index(drop=True)
    if pixels is None:
        pixels = np.zeros((0, size, size, 3), np.uint8)
    return pixels, located, failures


class PixelBatches(keras.utils.PyDataset):
    """Float32 image batches (with one-hot labels) gathered from the pixel cache.

    Reshuffled each epoch when `shuffle`; `flip` mirrors every image (for flip-averaged
    features); threads prefetch batches so the accelerator is never waiting on numpy.
    """

    def __init__(self, pixels: np.ndarray, slots: np.ndarray, y: np.ndarray | None = None, *,
                 batch_size: int = 32, shuffle: bool = False, flip: bool = False,
                 seed: int = 0, workers: int = 2):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
        self.pixels, self.slots, self.y = pixels, np.asarray(slots, dtype=np.int64), y
        self.batch_size, self.shuffle, self.flip = batch_size, shuffle, flip
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.slots)) if shuffle else np.arange(len(self.slots))

    def __len__(self) -> int:
        return int(np.ceil(len(self.slots) / self.batch_size))

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.asarray(self.pixels[self.slots[chosen]], dtype=np.float32)
        if self.flip:
            images = images[:, :, ::-1]
        return images if self.y is None else (images, self.y[chosen])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.slots))


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 one-hot rows for class indices."""
    return np.eye(n_classes, dtype=np.float32)[y]


def pixel_cache_dir(workdir: Path) -> Path:
    """Where decoded pixels are kept between runs."""
    return Path(workdir) / "cache"
