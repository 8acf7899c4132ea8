"""Data-parallel training over every visible device: tf.distribute.MirroredStrategy under
TensorFlow, keras.distribution.DataParallel under JAX. Each batch is split across the devices
and the gradients are averaged, so the recipe (global batch size, rates) is unchanged."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import keras

from curation.errors import CurateError


def _tensorflow_devices() -> list[str]:
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def _jax_devices() -> list:
    import jax

    return jax.devices()


def wanted(requested: bool | None, accelerator: str, devices: int) -> bool:
    """Whether to train data-parallel: as requested, else (None) when two or more GPUs or TPUs
    are visible. Several CPU devices never switch it on by themselves: they share one
    machine's cores, so splitting a batch across them only adds the gradient exchange."""
    if requested is not None:
        return requested
    return accelerator != "cpu" and devices >= 2


@contextlib.contextmanager
def data_parallel(requested: bool | None, accelerator: str = "cpu") -> Iterator[int]:
    """While inside, models built, compiled and trained are replicated on every device of the
    accelerator in use (GPUs, else the logical CPUs); yields the number of replicas: 1 when
    not wanted (see `wanted`) or only one device is visible (then said once on stderr)."""
    backend = keras.backend.backend()
    if requested is False or backend not in ("tensorflow", "jax"):
        if requested:
            raise CurateError(f"--distribute needs KERAS_BACKEND tensorflow or jax, not {backend}")
        yield 1
        return
    devices = _tensorflow_devices() if backend == "tensorflow" else _jax_devices()
    if not wanted(requested, accelerator, len(devices)):
        yield 1
        return
    if len(devices) < 2:
        print("note: --distribute: only one device is visible; training on it", file=sys.stderr)
        yield 1
        return
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(devices).scope():
            yield len(devices)
        return
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        yield len(devices)
    finally:
        keras.distribution.set_distribution(None)
