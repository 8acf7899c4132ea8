"""End-to-end CLI behaviour common to every command."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_with_an_example(runner, name):
    result = runner.invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "%%" not in result.output   # click prints help text as written, unescaped


def test_scan_prints_summary_and_json(runner, class_tree, tmp_path):
    result = runner.invoke(main, ["scan", str(class_tree), "--workdir", str(tmp_path / "w"), "-q"])
    assert result.exit_code == 0, result.output
    assert "Scanned 12 files" in result.output and "3 classes" in result.output
    result = runner.invoke(main, ["scan", str(class_tree), "--workdir", str(tmp_path / "w"), "--json"])
    summary = json.loads(result.output)
    assert summary["reused"] == 12 and summary["classes"] == {"alpha": 4, "beta": 4, "gamma": 4}


def test_default_workdir_is_under_dot_curate(runner, class_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["scan", str(class_tree), "-q"]).exit_code == 0
    assert (tmp_path / ".curate" / "data" / "manifest.parquet").is_file()
    assert (tmp_path / ".curate" / "data" / "runs" / "scan.json").is_file()


def test_bad_config_is_one_clear_error(runner, tmp_path):
    config = tmp_path / "datasets.yaml"
    config.write_text("datasets:\n  cars:\n    root: x\n    colour: red\n")
    result = runner.invoke(main, ["--config", str(config), "scan", "cars"])
    assert result.exit_code == 1
    assert "dataset 'cars': unknown key 'colour'" in result.output
    assert "Traceback" not in result.output


def test_missing_root_says_how_to_fix(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("CURATE_DATA", raising=False)
    config = tmp_path / "datasets.yaml"
    config.write_text("datasets:\n  cars:\n    root: nowhere\n")
    result = runner.invoke(main, ["--config", str(config), "scan", "cars"])
    assert result.exit_code == 1 and "key 'root' points to" in result.output
    listing = runner.invoke(main, ["--config", str(config), "datasets"])
    assert "MISSING cars" in listing.output
