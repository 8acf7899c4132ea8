"""The embedding network as one model (preprocessing + backbone + average pooling), and its ONNX
export, made once per backbone, size and weights into a cache folder shared by every dataset.

Both engines run this same network: Keras directly, ONNX Runtime from the exported file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from pathlib import Path

from curation.embed.backbones import build_backbone, preprocess, resolve_weights
from curation.manifest import atomic_write

EXPORT_FORMAT = "onnx-v1"   # bump when the exported graph changes, so old exports are not reused


def cache_root() -> Path:
    """$CURATE_CACHE, else $XDG_CACHE_HOME/curate, else ~/.cache/curate (per user, not dataset)."""
    explicit = os.environ.get("CURATE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "curate"


def embedding_model(backbone: str, weights: str | None, image_size: int, seed: int = 0):
    """float32 RGB pixels in [0, 255] (n, size, size, 3) -> pooled features (n, d), in Keras.

    The seed only matters for random-init weights ('none').
    """
    import keras

    keras.utils.set_random_seed(seed)
    network = build_backbone(backbone, weights, image_size)
    pixels = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    scaled = keras.layers.Lambda(lambda x: preprocess(backbone, x), name="preprocess")(pixels)
    return keras.Model(pixels, network(scaled), name=f"{backbone}_embedding")


def onnx_path(backbone: str, weights: str | None, image_size: int, seed: int = 0) -> Path:
    """Where the export for these settings lives: a folder named by the weights file's content
    hash ('imagenet' for Keras's own download, 'none-seed<N>' for random init)."""
    resolved = resolve_weights(backbone, weights)
    if resolved is None:
        key = f"none-seed{seed}"
    elif resolved == "imagenet":
        key = "imagenet"
    else:
        key = hashlib.sha256(Path(resolved).read_bytes()).hexdigest()[:16]
    return cache_root() / EXPORT_FORMAT / key / f"{backbone}_{image_size}.onnx"


def export_onnx(backbone: str, weights: str | None, image_size: int, out: Path,
                seed: int = 0) -> Path:
    """Export the embedding model to `out` (atomically) with Keras's own ONNX export (tf2onnx)."""
    import numpy as np

    model = embedding_model(backbone, weights, image_size, seed)
    model.predict_on_batch(np.zeros((1, image_size, image_size, 3), np.float32))  # build it
    return export_keras(model, out)


def export_keras(model, out: Path) -> Path:
    """Write a built Keras model to `out` (atomically) as ONNX, with Keras's own export (tf2onnx)."""

    def write(tmp: Path) -> None:
        # tf2onnx warns about NumPy 2 and prints "Saved artifact": keep stdout clean for --json
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            model.export(str(tmp), format="onnx", verbose=False)

    return atomic_write(out, write)
