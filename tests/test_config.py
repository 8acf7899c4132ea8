"""datasets.yaml validation: every bad setting fails once, naming the file, entry and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation.config import ConfigError, load_config, resolve_dataset, validate_ratios

REPO_CONFIG = Path(__file__).resolve().parent.parent / "datasets.yaml"


def write(tmp_path, text):
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


def test_repo_config_has_the_four_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("CURATE_DATA", str(tmp_path))
    configs = load_config(REPO_CONFIG)
    assert set(configs) == {"stanford-cars-25", "swift-wagonr", "swift-wagonr-4000",
                            "indian-cars-7"}
    for name in ("swift-wagonr", "swift-wagonr-4000"):   # the 300-photo copy and the full set
        swift = configs[name]
        assert swift.ratios == (0.6, 0.2, 0.2)
        assert swift.layout == "split_class_folders"
        assert swift.classes == ("swift", "wagonr")
        assert swift.root == (tmp_path / name).resolve()


def test_relative_root_without_curate_data_uses_yaml_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CURATE_DATA", raising=False)
    path = write(tmp_path, "datasets:\n  cars:\n    root: photos\n")
    assert load_config(path)["cars"].root == (tmp_path / "photos").resolve()


@pytest.mark.parametrize("entry, message", [
    ("root: x\n    colour: red", "dataset 'cars': unknown key 'colour'"),
    ("root: x\n    image_size: big", "dataset 'cars': key 'image_size' must be int"),
    ("root: x\n    ratios: [0.5, 0.5, 0.5]", "dataset 'cars': key 'ratios' must be three"),
    ("root: x\n    layout: flat", "dataset 'cars': key 'layout' must be one of"),
    ("root: x\n    backbone: vgg", "dataset 'cars': key 'backbone' must be one of"),
    ("root: x\n    training: {epochs: many}", "dataset 'cars': key 'training.epochs' must be int"),
    ("root: x\n    training: {epoch: 3}", "dataset 'cars': unknown key 'training.epoch'"),
    ("layout: auto", "dataset 'cars': missing required key 'root'"),
    ("root: x\n    classes: [a, a]", "dataset 'cars': key 'classes' must be a list of distinct"),
])
def test_bad_entries_name_file_entry_and_key(tmp_path, entry, message):
    path = write(tmp_path, f"datasets:\n  cars:\n    {entry}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_folder_path_is_a_dataset(class_tree):
    config = resolve_dataset(str(class_tree))
    assert config.name == "data" and config.root == class_tree.resolve()


def test_unknown_dataset_lists_known_names(tmp_path):
    path = write(tmp_path, "datasets:\n  cars:\n    root: x\n")
    with pytest.raises(ConfigError, match=r"'nope' is neither.*known: cars"):
        resolve_dataset("nope", path)


def test_ratios_from_the_command_line():
    assert validate_ratios("0.6,0.2,0.2") == (0.6, 0.2, 0.2)
    with pytest.raises(ConfigError, match="summing to 1"):
        validate_ratios("0.6,0.2")
