"""The trained classifier's forward pass for serving: images -> (embeddings, probabilities).

`onnx` (the default when onnxruntime is importable): the feature model exported once to ONNX,
cached beside model.keras under a hash of its bytes, and run by ONNX Runtime on every core
(curation.embed.engines.sliced_runner); ~2x Keras's rate on 2 CPU cores (docs/check.md).
`keras`: the Keras model itself, the reference. A model whose export fails runs on keras.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from curation.embed.engines import ExportFailed, onnx_session, sliced_runner
from curation.embed.export import EXPORT_FORMAT, export_keras

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def onnx_file(model_dir: Path) -> Path:
    """Where model.keras's export lives: named by its content, so a retrained model is
    exported again rather than served stale."""
    digest = hashlib.sha256((Path(model_dir) / "model.keras").read_bytes()).hexdigest()[:16]
    return Path(model_dir) / f"model.{digest}.{EXPORT_FORMAT}.onnx"


def forward_pass(model_dir: Path, model, engine: str) -> tuple[str, Forward]:
    """(engine actually used, uint8-range (n, h, w, 3) -> float32 (features, probabilities))
    for a feature_model loaded from model_dir."""
    if engine == "onnx":
        try:
            run = sliced_runner(onnx_session(onnx_file(model_dir),
                                             lambda out: _export(model, out)))
            return "onnx", lambda images: tuple(run(images))
        except ExportFailed as exc:
            print(f"onnx engine unavailable for {model_dir} ({exc}); using keras", file=sys.stderr)
    return "keras", _keras_pass(model)


def _export(model, out: Path) -> Path:
    model.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # build it first
    return export_keras(model, out)


def _keras_pass(model) -> Forward:
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # padded to a power of two, so TensorFlow traces only a few batch shapes
        n = len(images)
        batch = np.zeros((1 << (n - 1).bit_length(), *images.shape[1:]), np.float32)
        batch[:n] = images
        features, probs = model.predict_on_batch(batch)
        return np.asarray(features, np.float32)[:n], np.asarray(probs, np.float32)[:n]

    return run
