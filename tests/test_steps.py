"""The Step protocol's settings: resolved once at the door, one error style, CLI options
generated from the same declarations."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from curation import registry
from curation.cli_options import run_flags, run_options, run_settings, step_options
from curation.config import DatasetConfig
from curation.settings import SettingError, setting
from curation.steps import Step, resolve_settings


def config(**changes) -> DatasetConfig:
    return DatasetConfig(name="cars", root=Path("."), **changes)


def test_none_takes_datasets_yaml_and_every_value_is_checked():
    noise = resolve_settings(registry.FLAG_NOISE, config(backbone="resnet50", image_size=96), {})
    assert (noise.backbone, noise.image_size, noise.folds) == ("resnet50", 96, 5)
    split = resolve_settings(registry.SPLIT, config(), {"ratios": "0.8,0.1,0.1",
                                                         "exclude": ["none"]})
    assert split.ratios == (0.8, 0.1, 0.1) and split.exclude == ()
    with pytest.raises(SettingError, match=r"^dedupe: option --hash \(setting 'kinds'\) "
                                           r"unknown hash md5"):
        resolve_settings(registry.DEDUPE, config(), {"kinds": "phash,md5"})
    with pytest.raises(SettingError, match=r"option --max-flag-rate .* must be above 0, got 0"):
        resolve_settings(registry.FLAG_NOISE, config(), {"max_flag_rate": 0})
    with pytest.raises(SettingError, match=r"option --seed .* must be a whole number"):
        resolve_settings(registry.SPLIT, config(), {"seed": 1.5})
    with pytest.raises(SettingError, match=r"unknown setting\(s\) \['colour'\]"):
        resolve_settings(registry.SCAN, config(), {"colour": "red"})
    with pytest.raises(SettingError, match="--fix-leaks goes with --respect-given"):
        resolve_settings(registry.SPLIT, config(), {"fix_leaks": True})
    assert SettingError.exit_code == 2


@dataclass(frozen=True)
class _Loud:
    threshold: float = setting(0.5, "A fraction.", low=0, high=1)
    seed: int = setting(0, "Seed.")


@dataclass(frozen=True)
class _Quiet:
    threshold: int = setting(3, "Bits.", low=0, high=64)
    seed: int = setting(0, "Seed.")


def _step(name: str, settings: type) -> Step:
    return Step(name, settings, lambda work, s: {}, str)


def test_run_options_share_a_name_only_when_it_means_one_thing():
    with pytest.raises(TypeError, match=r"--threshold: steps \['loud', 'quiet'\]"):
        run_flags([_step("loud", _Loud), _step("quiet", _Quiet)])
    flags = run_flags(registry.PIPELINE)
    assert [s.name for s, _ in flags["--seed"]] == ["embed", "flag-noise", "split", "train"]
    assert [s.name for s, _ in flags["--engine"]] == ["embed", "flag-noise"]
    assert [s.name for s, _ in flags["--threshold"]] == ["dedupe"]
    assert [s.name for s, _ in flags["--noise-threshold"]] == ["flag-noise"]
    given = run_settings(registry.PIPELINE, {"seed": 3, "threshold": 4, "noise_threshold": 0.7,
                                             "exclude": (), "workers": None})
    assert given == {"embed": {"seed": 3}, "flag-noise": {"seed": 3, "threshold": 0.7},
                     "split": {"seed": 3}, "train": {"seed": 3}, "dedupe": {"threshold": 4}}


def test_generated_options_parse_and_check_like_the_settings():
    seen = {}

    @click.command()
    @step_options(registry.DEDUPE)
    def dedupe(**values):
        seen["dedupe"] = values

    @click.command()
    @run_options(registry.PIPELINE)
    def run(**values):
        seen["run"] = values

    runner = CliRunner()
    assert runner.invoke(dedupe, ["--hash", "phash", "--no-mirror"]).exit_code == 0
    assert seen["dedupe"]["kinds"] == "phash" and seen["dedupe"]["mirror"] is False
    assert seen["dedupe"]["sheet_groups"] == 12                       # the declared default
    assert runner.invoke(dedupe, ["--threshold", "65"]).exit_code == 2
    assert runner.invoke(run, ["--respect-given"]).exit_code == 0
    assert seen["run"]["respect_given"] is True and seen["run"]["seed"] is None   # not given
    assert "[embed, flag-noise, split, train]" in runner.invoke(run, ["--help"]).output
