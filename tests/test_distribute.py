"""`curate train --distribute` on two CPU devices trains to the accuracy of one device.

Each backend runs in its own process, because the devices must be declared before it starts:
TensorFlow with two logical CPUs (tf.config.set_logical_device_configuration), JAX with
XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from curation.config import DatasetConfig
from curation.manifest import read_manifest, write_manifest
from curation.scan.step import scan
from tests.test_training import CLASSES, REPO, _easy_image
from training.distribute import wanted

_TRAIN_BOTH_WAYS = """
import json, sys
from pathlib import Path
if sys.argv[1] == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from curation.config import DatasetConfig, TrainingSettings
from curation.manifest import read_manifest, write_manifest
from training.steps import train
config = DatasetConfig(name="easy", root=Path(sys.argv[2]), image_size=64,
                       backbone="mobilenet_v1_025", weights="imagenet", training=TrainingSettings(
                           epochs=6, fine_tune_epochs=1, batch_size=8, learning_rate=0.01,
                           fine_tune_layers=6, patience=6))
found = {}
for distribute in (False, True):
    workdir = Path(sys.argv[3]) / f"{sys.argv[1]}-distribute-{distribute}"
    workdir.mkdir()
    write_manifest(read_manifest(Path(sys.argv[3]) / "split"), workdir)
    summary = train(config, workdir, seed=1, workers=1, quiet=True, distribute=distribute)
    found[str(distribute)] = {k: summary[k] for k in ("val_accuracy", "replicas", "backend")}
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def split_set(tmp_path_factory):
    """The two-class easy set of test_training, scanned and split (10 train, 4 val per class)."""
    base = tmp_path_factory.mktemp("distribute")
    for c, label in enumerate(CLASSES):
        for i in range(14):
            _easy_image(base / "data" / label / f"{i:02d}.jpg", label, seed=1000 * c + i)
    scan(DatasetConfig(name="easy", root=base / "data"), base / "split", workers=1, quiet=True)
    manifest = read_manifest(base / "split")
    manifest["split"] = np.where(manifest.groupby("label").cumcount() < 10, "train", "val")
    write_manifest(manifest, base / "split")
    return base


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.parametrize("backend", [
    "tensorflow",
    pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                 reason="jax is not installed"))])
def test_two_cpu_devices_train_to_the_accuracy_of_one(split_set, curate_weights, backend):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": backend,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", _TRAIN_BOTH_WAYS, backend,
                           str(split_set / "data"), str(split_set)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = found["False"], found["True"]
    assert (one["replicas"], two["replicas"]) == (1, 2) and two["backend"] == backend
    assert one["val_accuracy"] >= 0.75
    assert abs(two["val_accuracy"] - one["val_accuracy"]) <= 0.125   # one of 8 val images


def test_several_accelerators_switch_data_parallel_on_unless_told():
    assert wanted(None, "gpu", 2) and wanted(None, "tpu", 8)
    assert not wanted(None, "gpu", 1)
    assert not wanted(None, "cpu", 16)             # virtual CPUs share one machine's cores
    assert not wanted(False, "gpu", 4) and wanted(True, "cpu", 2)
