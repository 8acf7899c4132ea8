"""Engines that run the embedding network on a batch of decoded images.

`onnx` (the default when onnxruntime is importable): the network exported once to ONNX and run by
ONNX Runtime's CPU provider, one single-threaded session call per core on slices of the batch
(measured ~1.3x faster here than one call with intra-op threads = cores: MobileNetV2's small
depthwise layers split poorly across threads). `keras`: the Keras model itself, the reference
and the GPU path. A backbone whose export fails (EfficientNetB0's normalisation constants come
out as graph inputs) runs on keras, said once on stderr.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from curation.embed.export import embedding_model, export_onnx, onnx_path
from curation.manifest import atomic_write_text
from curation.parallel import default_workers

ENGINES = ("onnx", "keras")


@dataclass(frozen=True)
class Engine:
    name: str                                  # the engine that actually runs
    run: Callable[[np.ndarray], np.ndarray]    # uint8 (n, h, w, 3) -> float32 features (n, d)


class ExportFailed(Exception):
    """The backbone could not be exported to a usable ONNX model; str() says why."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_engine() -> str:
    """onnx when onnxruntime is installed, else keras."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "keras"
    return "onnx"


def decode_workers(engine: str) -> int:
    """Default decoding processes: onnx runs inference on every core, and decoding a photo costs
    ~1/5 of embedding it (1.9 vs 9.7 ms CPU), so a quarter of the cores decode (measured on 2 cores:
    one decoder 145 img/s, two 133); keras, the GPU path, where decoding is the bottleneck, gets
    the usual pool."""
    return max(1, cores() // 4) if engine == "onnx" else default_workers()


def get_engine(name: str, backbone: str, weights: str | None, image_size: int,
               seed: int = 0, threads: int | None = None) -> Engine:
    """The engine `name` (one of ENGINES) for these settings, built once per process; onnx falls
    back to keras when the backbone cannot be exported. threads: onnx's concurrent session calls
    (default: the cores; 1 in a Dask worker, whose siblings fill the other cores)."""
    if name == "onnx":
        try:
            return _onnx_engine(backbone, weights, image_size, seed, threads or cores())
        except ExportFailed as exc:
            print(f"onnx engine unavailable for {backbone} ({exc}); using keras", file=sys.stderr)
    return _keras_engine(backbone, weights, image_size, seed)


def mirror_averaged(run: Callable, images: np.ndarray):
    """run over a batch and its mirror images in one call; each output (an array, or a tuple
    of arrays) is the mean of an image's two views."""
    n = len(images)
    out = run(np.concatenate([images, images[:, :, ::-1]]))
    if isinstance(out, tuple):
        return tuple((o[:n] + o[n:]) / 2 for o in out)
    return (out[:n] + out[n:]) / 2


def embed_views(engine: Engine, images: np.ndarray, *, tta: bool) -> np.ndarray:
    """Features of a uint8 batch; with tta the mirror images ride in the same batch and each
    vector is the mean of an image's two views."""
    return mirror_averaged(engine.run, images) if tta else engine.run(images)


@functools.lru_cache(maxsize=2)
def _keras_engine(backbone: str, weights: str | None, image_size: int, seed: int) -> Engine:
    model = embedding_model(backbone, weights, image_size, seed)

    def run(images: np.ndarray) -> np.ndarray:
        # no padding of short batches: TensorFlow stops retracing after the second batch size
        return np.asarray(model.predict_on_batch(images.astype(np.float32)), dtype=np.float32)

    return Engine("keras", run)


def prepare(name: str, backbone: str, weights: str | None, image_size: int,
            seed: int = 0) -> None:
    """Make the onnx engine's export now, in this process, when it is missing: Dask workers that
    share this machine's cache folder then load it instead of each exporting it at once."""
    if name == "onnx":
        with contextlib.suppress(ExportFailed):   # the workers run keras and say so
            _exported(onnx_path(backbone, weights, image_size, seed),
                      lambda out: export_onnx(backbone, weights, image_size, out, seed))


@functools.lru_cache(maxsize=2)
def _onnx_engine(backbone: str, weights: str | None, image_size: int, seed: int,
                 threads: int) -> Engine:
    run = sliced_runner(onnx_session(onnx_path(backbone, weights, image_size, seed),
                                     lambda out: export_onnx(backbone, weights, image_size, out,
                                                             seed)), threads)
    return Engine("onnx", lambda images: run(images)[0])


def sliced_runner(session, threads: int | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A batch (n, h, w, 3) -> every float32 output of `session`: the batch is cut into one
    slice per thread (default: per core) and the slices run at once (session.run releases the
    GIL and is safe to call from several threads)."""
    name = session.get_inputs()[0].name
    threads = threads or cores()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnx")

    def one(images: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {name: images.astype(np.float32)})

    def run(images: np.ndarray) -> list[np.ndarray]:
        parts = list(pool.map(one, np.array_split(images, min(threads, len(images)))))
        return [np.concatenate([part[k] for part in parts]).astype(np.float32, copy=False)
                for k in range(len(parts[0]))]

    return run


def _exported(path: Path, export: Callable[[Path], Path]) -> Path:
    """`path`, exported first when absent. A failed export is remembered beside it (`.failed`,
    with the reason) so later runs do not try again."""
    failed = path.with_suffix(".failed")
    if failed.exists():
        raise ExportFailed(failed.read_text().strip())
    if not path.exists():
        try:
            export(path)
        except Exception as exc:  # tf2onnx raises many types for graphs it cannot convert
            atomic_write_text(failed, f"export failed: {type(exc).__name__}: {exc}"[:300])
            raise ExportFailed(failed.read_text()) from None
    return path


def onnx_session(path: Path, export: Callable[[Path], Path]):
    """An ONNX Runtime session on `path` (exported first when absent), one thread per call."""
    import onnxruntime

    failed = path.with_suffix(".failed")
    _exported(path, export)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if len(session.get_inputs()) != 1:
        atomic_write_text(failed, f"the export has {len(session.get_inputs())} inputs, not 1")
        raise ExportFailed(failed.read_text())
    return session
