"""`curate demo`: the whole pipeline on a small dataset in a few minutes, ending with the report.

With $CURATE_DATA holding swift-wagonr it runs on those real photos; otherwise on a generated
SYNTHETIC set with planted duplicates, mislabels, off-topic pictures and broken files. Everything
is written under one demo folder the user names (default: ./.curate/demo), never beside the
user's files.
"""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from curation.embed.backbones import resolve_weights
from curation.config import DatasetConfig, TrainingSettings, data_dir, resolve_dataset
from curation.demo.synthetic import NOTICE, generate

REAL_DEMO = "swift-wagonr"
DEMO_BACKBONE = "mobilenet_v2"
DEMO_IMAGE_SIZE = {"synthetic": 96, "real": 160}   # drawn shapes need few pixels, photos more
DEMO_TRAINING = TrainingSettings(epochs=10, fine_tune_epochs=2, batch_size=32, patience=3,
                                 fine_tune_layers=20)


def default_folder() -> Path:
    """Where the demo writes by default: .curate/demo under the current directory, beside the
    other steps' default workdirs (reused on re-runs)."""
    return Path.cwd() / ".curate" / "demo"


def online(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether Keras could download weights (one TCP connection attempt)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_weights(backbone: str = DEMO_BACKBONE, *, is_online=online) -> tuple[str, str]:
    """('imagenet' or 'none', a sentence saying where the weights come from)."""
    local = resolve_weights(backbone, "imagenet")
    if local and local != "imagenet":
        return "imagenet", f"ImageNet weights from $CURATE_WEIGHTS ({local})"
    if is_online():
        return "imagenet", "ImageNet weights downloaded by Keras"
    return "none", ("NOTE: offline and no $CURATE_WEIGHTS, so the backbone starts from random "
                    "weights: duplicates are still found, but noise flags and accuracy are far "
                    "below what ImageNet weights give. Set CURATE_WEIGHTS to a folder with "
                    "mobilenet_v2_1.0_224_no_top.weights.h5 to fix.")


def demo_dataset(folder: Path, *, synthetic: bool = False, seed: int = 0,
                 config_path=None) -> tuple[DatasetConfig, str]:
    """(config, description): swift-wagonr from $CURATE_DATA, else the synthetic set under folder."""
    shared = data_dir()
    if not synthetic and shared is not None and (shared / REAL_DEMO).is_dir():
        config = resolve_dataset(REAL_DEMO, config_path)
        return config, (f"real photos: {REAL_DEMO} from $CURATE_DATA ({config.root}), "
                        f"given train/validation/test folders with known cross-split duplicates")
    truth = generate(folder / "synthetic-data", seed=seed)
    counts = truth["counts"]
    config = DatasetConfig(name="synthetic-vehicles", root=(folder / "synthetic-data" / "images").resolve(),
                           layout="split_class_folders", description=NOTICE)
    return config, (f"{NOTICE} {counts['files']} files, {len(truth['classes'])} classes; planted "
                    f"{counts['exact_duplicate']} exact and {counts['near_duplicate']} near duplicates, "
                    f"{counts['mislabel']} mislabels, {counts['off_topic']} off-topic, "
                    f"{counts['broken']} broken files")


def demo_config(config: DatasetConfig, weights: str) -> DatasetConfig:
    """The dataset with the demo's small settings: small images, MobileNetV2, a few epochs."""
    size = DEMO_IMAGE_SIZE["synthetic" if is_synthetic(config) else "real"]
    return dataclasses.replace(config, image_size=size, backbone=DEMO_BACKBONE, weights=weights,
                               training=DEMO_TRAINING)


def is_synthetic(config: DatasetConfig) -> bool:
    return config.description == NOTICE


def describe(summary: dict) -> str:
    """The run's per-step table, then what the data was and where the report is."""
    from curation.pipeline import describe as describe_run

    lines = [describe_run(summary), f"Data: {summary['data']}", f"Weights: {summary['weights']}"]
    if summary.get("report"):
        lines.append(f"Open the report: file://{summary['report']}")
    return "\n".join(lines)
