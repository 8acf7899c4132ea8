"""datasets.yaml: load, validate once at the door, and resolve dataset roots and workdirs.

Every setting a step uses enters here, so a bad key fails with one message naming the
file, the entry and the key instead of deep inside a step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from curation.errors import CurateError

LAYOUTS = ("class_folders", "split_class_folders", "auto")
BACKBONES = ("mobilenet_v2", "mobilenet_v1_025", "efficientnet_b0", "resnet50")
DEFAULT_CONFIG_NAME = "datasets.yaml"


class ConfigError(CurateError, ValueError):
    """A datasets.yaml entry or a command-line setting is invalid."""


@dataclass(frozen=True)
class TrainingSettings:
    """Training recipe: a frozen-backbone head phase, then fine-tuning of the top layers."""

    epochs: int = 8
    fine_tune_epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    fine_tune_layers: int = 40
    dropout: float = 0.2
    label_smoothing: float = 0.1
    patience: int = 4
    augment: bool = True


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset: where it lives, how its folders are laid out, and how to train on it."""

    name: str
    root: Path
    layout: str = "auto"
    classes: tuple[str, ...] | None = None
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    image_size: int = 224
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    training: TrainingSettings = field(default_factory=TrainingSettings)
    description: str = ""
    cluster: str | None = None      # where per-file work runs: None, "local" or tcp://HOST:PORT

    def default_workdir(self) -> Path:
        return Path(".curate") / self.name


_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "root": str, "layout": str, "classes": list, "ratios": list, "image_size": int,
    "backbone": str, "weights": str, "training": dict, "description": str,
    "cluster": str,
}
_TRAINING_FIELDS = {f.name: f.type for f in fields(TrainingSettings)}


def data_dir() -> Path | None:
    """The shared data folder named by $CURATE_DATA, or None."""
    value = os.environ.get("CURATE_DATA")
    return Path(value).expanduser() if value else None


def weights_dir() -> Path | None:
    """The offline weights folder named by $CURATE_WEIGHTS, or None."""
    value = os.environ.get("CURATE_WEIGHTS")
    return Path(value).expanduser() if value else None


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """The datasets.yaml to use: explicit path, $CURATE_CONFIG, ./datasets.yaml, or the repo's."""
    candidates = [explicit, os.environ.get("CURATE_CONFIG"), Path.cwd() / DEFAULT_CONFIG_NAME,
                  Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if explicit:
        raise ConfigError(f"{explicit}: config file not found")
    return None


def load_config(path: str | os.PathLike | None = None) -> dict[str, DatasetConfig]:
    """Parse and validate every entry of datasets.yaml; an empty dict when there is none."""
    config_path = find_config_file(path)
    if config_path is None:
        return {}
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
    entries = raw.get("datasets", raw) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{config_path}: expected a mapping 'datasets: {{name: {{...}}}}'")
    return {name: _parse_entry(config_path, str(name), entry) for name, entry in entries.items()}


def _parse_entry(config_path: Path, name: str, entry: Any) -> DatasetConfig:
    where = f"{config_path}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(entry).__name__}")
    for key, value in entry.items():
        if key not in _ENTRY_TYPES:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(_ENTRY_TYPES)})")
        if not isinstance(value, _ENTRY_TYPES[key]) or isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be {_ENTRY_TYPES[key].__name__}, "
                              f"got {type(value).__name__} ({value!r})")
    if "root" not in entry:
        raise ConfigError(f"{where}: missing required key 'root'")
    root = resolve_root(entry["root"], config_path.parent)
    try:
        return DatasetConfig(
            name=name, root=root,
            layout=validate_layout(entry.get("layout", "auto")),
            classes=_parse_classes(entry.get("classes")),
            ratios=validate_ratios(entry.get("ratios", [0.7, 0.15, 0.15])),
            image_size=validate_image_size(entry.get("image_size", 224)),
            backbone=validate_backbone(entry.get("backbone", "mobilenet_v2")),
            weights=entry.get("weights", "imagenet"),
            training=_parse_training(entry.get("training", {})),
            description=entry.get("description", ""),
            cluster=validate_cluster(entry.get("cluster")),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def resolve_root(root: str, config_folder: Path) -> Path:
    """Absolute roots stay; relative ones resolve against $CURATE_DATA, else the yaml's folder."""
    path = Path(root).expanduser()
    if path.is_absolute():
        return path
    base = data_dir() or config_folder
    return (base / path).resolve()


def validate_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"key 'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def validate_ratios(ratios) -> tuple[float, float, float]:
    """Three non-negative train/val/test fractions summing to 1 (within 1e-6)."""
    if isinstance(ratios, str):
        ratios = [part for part in ratios.split(",") if part.strip()]
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise ConfigError(f"key 'ratios' must be three numbers, got {ratios!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"key 'ratios' must be three non-negative train/val/test "
                          f"fractions summing to 1, got {list(values)}")
    return values  # type: ignore[return-value]


def validate_image_size(size: int) -> int:
    if not 32 <= size <= 1024:
        raise ConfigError(f"key 'image_size' must be between 32 and 1024, got {size}")
    return size


def validate_backbone(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ConfigError(f"key 'backbone' must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    return backbone


def parse_cluster(address: str | None) -> str | None:
    """None or "none" (the in-process pool), "local" (a Dask LocalCluster on this machine) or
    the scheduler address tcp://HOST:PORT of a running Dask cluster; ValueError otherwise."""
    if address is None or str(address).strip().lower() in ("", "none"):
        return None
    address = str(address).strip()
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if address != "local" and not (address.startswith("tcp://") and host and port.isdigit()):
        raise ValueError("must be none, local or tcp://HOST:PORT")
    return address


def validate_cluster(address: str | None) -> str | None:
    try:
        return parse_cluster(address)
    except ValueError as exc:
        raise ConfigError(f"key 'cluster' {exc}, got {address!r}") from None


def _parse_classes(classes) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise ConfigError("key 'classes' must be a list of distinct folder names")
    return tuple(classes)


def _parse_training(values: dict) -> TrainingSettings:
    for key, value in values.items():
        if key not in _TRAINING_FIELDS:
            raise ConfigError(f"unknown key 'training.{key}' "
                              f"(known: {', '.join(_TRAINING_FIELDS)})")
        expected = {"int": int, "float": (int, float), "bool": bool}[str(_TRAINING_FIELDS[key])]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"key 'training.{key}' must be {_TRAINING_FIELDS[key]}, got {value!r}")
    return TrainingSettings(**values)


def resolve_dataset(spec: str, config_path: str | os.PathLike | None = None) -> DatasetConfig:
    """A datasets.yaml entry by name, or a folder path (named after its basename)."""
    configs = load_config(config_path)
    if spec in configs:
        return configs[spec]
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return DatasetConfig(name=folder.resolve().name, root=folder.resolve())
    known = ", ".join(sorted(configs)) or "none"
    raise ConfigError(f"'{spec}' is neither a dataset in datasets.yaml (known: {known}) "
                      f"nor an existing folder")


def check_root(config: DatasetConfig) -> None:
    """Raise a ConfigError naming the dataset when its root folder is absent."""
    if not config.root.is_dir():
        hint = "" if data_dir() else " (set CURATE_DATA to the data folder for relative roots)"
        raise ConfigError(f"dataset '{config.name}': key 'root' points to {config.root}, "
                          f"which is not a folder{hint}")


def check_classes(config: DatasetConfig, found: set[str]) -> None:
    """Raise when datasets.yaml lists classes that differ from the class folders found."""
    if config.classes is None:
        return
    missing, extra = set(config.classes) - found, found - set(config.classes)
    if missing or extra:
        raise ConfigError(f"dataset '{config.name}': key 'classes' does not match the folders "
                          f"under {config.root}: missing {sorted(missing)}, unexpected {sorted(extra)}")
