"""`curate demo`: the whole pipeline on a small dataset in a few minutes, ending with the report.

With $CURATE_DATA holding swift-wagonr it runs on those real photos; otherwise on a generated
SYNTHETIC set with planted duplicates, mislabels, off-topic pictures and broken files. Everything
is written under one demo folder the user names (default: ./.curate/demo), never beside the
user's files.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from curation.config import (ConfigError, DatasetConfig, TrainingSettings, data_dir,
                             resolve_dataset, weights_dir)
from curation.demo.synthetic import NOTICE, generate
from curation.embed.backbones import SPECS
from training.scratch import SCRATCH

REAL_DEMO = "swift-wagonr"
DEMO_BACKBONE = "mobilenet_v2"
DEMO_IMAGE_SIZE = {"synthetic": 96, "real": 160}   # drawn shapes need few pixels, photos more
DEMO_TRAINING = TrainingSettings(epochs=10, fine_tune_epochs=2, batch_size=32, patience=3,
                                 fine_tune_layers=20)
SCRATCH_IMAGE_SIZE = 64
SCRATCH_TRAINING = TrainingSettings(epochs=30, fine_tune_epochs=0, batch_size=32, patience=10,
                                    learning_rate=3e-3, label_smoothing=0.0)
CHECKOUT = Path(__file__).resolve().parents[2]


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


def weight_folders() -> list[Path]:
    """Where a user may already have ImageNet weights, in the order searched: $CURATE_WEIGHTS,
    Keras's download cache ($KERAS_HOME/models, default ~/.keras/models), and a shared/weights
    folder beside this checkout (the layout of the project's own machines)."""
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    folders = [weights_dir(), keras_home / "models", CHECKOUT.parent / "shared" / "weights"]
    return [folder for folder in folders if folder is not None]


def find_weights_file(backbone: str = DEMO_BACKBONE, folders: list[Path] | None = None
                      ) -> Path | None:
    """The first no-top weights file for backbone found in folders (default: weight_folders())."""
    for folder in weight_folders() if folders is None else folders:
        for name in SPECS[backbone].weights_files:
            if (folder / name).is_file():
                return folder / name
    return None


def choose_weights(backbone: str = DEMO_BACKBONE, *, synthetic: bool, is_online=None,
                   folders: list[Path] | None = None) -> tuple[str, str]:
    """(weights, a sentence saying where they come from): a file the user has, else a Keras
    download, else (synthetic data only) a small CNN trained from scratch. Real photos without
    weights raise ConfigError saying exactly what to set."""
    found = find_weights_file(backbone, folders)
    if found is not None:
        return str(found), f"ImageNet weights from {found}"
    if (is_online or online)():
        return "imagenet", "ImageNet weights downloaded by Keras"
    looked = ", ".join(str(f) for f in (weight_folders() if folders is None else folders))
    wanted = SPECS[backbone].weights_files[0]
    if synthetic:
        return SCRATCH, (f"NOTE: no ImageNet weights found ({looked}) and offline, so the "
                         f"classifier is a small CNN trained from scratch, and embed and "
                         f"flag-noise are skipped (their embeddings need ImageNet weights). For "
                         f"the full demo set CURATE_WEIGHTS to a folder holding {wanted}.")
    raise ConfigError(f"the real-photo demo needs ImageNet weights: none found ({looked}) and "
                      f"Keras cannot download them offline. Set CURATE_WEIGHTS to a folder holding "
                      f"{wanted}, or run `curate demo --synthetic` (a small CNN trained from "
                      f"scratch on generated data)")


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
    """The dataset with the demo's small settings: small images, MobileNetV2 (or the small CNN
    from scratch), a few epochs."""
    if weights == SCRATCH:
        return dataclasses.replace(config, image_size=SCRATCH_IMAGE_SIZE, weights=weights,
                                   training=SCRATCH_TRAINING)
    size = DEMO_IMAGE_SIZE["synthetic" if is_synthetic(config) else "real"]
    return dataclasses.replace(config, image_size=size, backbone=DEMO_BACKBONE, weights=weights,
                               training=DEMO_TRAINING)


def skipped_steps(weights: str) -> dict[str, str]:
    """Steps the demo leaves out, with why: embed and flag-noise without ImageNet weights."""
    if weights == SCRATCH:
        why = "no ImageNet weights: random embeddings would flag noise at random"
        return {"embed": why, "flag-noise": why}
    return {}


def is_synthetic(config: DatasetConfig) -> bool:
    return config.description == NOTICE


def describe(summary: dict) -> str:
    """The run's per-step table, then what the data was and where the report is."""
    from curation.pipeline import describe as describe_run

    lines = [describe_run(summary), f"Data: {summary['data']}", f"Weights: {summary['weights']}"]
    if summary.get("report"):
        lines.append(f"Open the report: file://{summary['report']}")
    return "\n".join(lines)
