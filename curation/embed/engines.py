"""Engines that run the embedding network on a batch of decoded images.

`onnx` (the default when onnxruntime is importable): the network exported once to ONNX and run by
ONNX Runtime's CPU provider, one single-threaded session call per core on slices of the batch
(measured ~1.3x faster here than one call with intra-op threads = cores: MobileNetV2's small
depthwise layers split poorly across threads). `keras`: the Keras model itself, the reference
and the GPU path.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from curation.embed.export import embedding_model, export_onnx, onnx_path

ENGINES = ("onnx", "keras")

Engine = Callable[[np.ndarray], np.ndarray]   # uint8 (n, h, w, 3) -> float32 features (n, d)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_engine() -> str:
    """onnx when onnxruntime is installed, else keras."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "keras"
    return "onnx"


def get_engine(name: str, backbone: str, weights: str | None, image_size: int,
               seed: int = 0) -> Engine:
    """The engine `name` (one of ENGINES) for these settings, built once per process."""
    if name == "onnx":
        return _onnx_engine(backbone, weights, image_size, seed)
    return _keras_engine(backbone, weights, image_size, seed)


def embed_views(engine: Engine, images: np.ndarray, *, tta: bool) -> np.ndarray:
    """Features of a uint8 batch; with tta the mirror images ride in the same batch and each
    vector is the mean of an image's two views."""
    if not tta:
        return engine(images)
    features = engine(np.concatenate([images, images[:, :, ::-1]]))
    return (features[:len(images)] + features[len(images):]) / 2


@functools.lru_cache(maxsize=2)
def _keras_engine(backbone: str, weights: str | None, image_size: int, seed: int) -> Engine:
    model = embedding_model(backbone, weights, image_size, seed)

    def run(images: np.ndarray) -> np.ndarray:
        # no padding of short batches: TensorFlow stops retracing after the second batch size
        return np.asarray(model.predict_on_batch(images.astype(np.float32)), dtype=np.float32)

    return run


@functools.lru_cache(maxsize=2)
def _onnx_engine(backbone: str, weights: str | None, image_size: int, seed: int) -> Engine:
    import onnxruntime

    path = onnx_path(backbone, weights, image_size, seed)
    if not path.exists():
        export_onnx(backbone, weights, image_size, path, seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    threads = cores()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnx")

    def one(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images.astype(np.float32)})[0]

    def run(images: np.ndarray) -> np.ndarray:
        # session.run releases the GIL and is safe to call from several threads at once
        slices = np.array_split(images, min(threads, len(images)))
        return np.concatenate(list(pool.map(one, slices))).astype(np.float32, copy=False)

    return run
