"""`curate flag-noise`: the step on generated folders, the CLI, and planted noise in real photos."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from curation.config import DatasetConfig
from curation.manifest import read_manifest, read_run
from curation.noise.step import OUTPUT_COLUMNS, flag_noise, judging_units
from curation.scan.step import scan

TINY = dict(image_size=64, backbone="mobilenet_v1_025", weights="none")


@pytest.fixture
def tree(class_tree):
    """3 classes x 4 generated photos, plus one unreadable file."""
    (class_tree / "beta" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return class_tree


def digest_tree(root) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_step_writes_columns_and_outputs_and_reuses_embeddings(tree, tmp_path):
    config = DatasetConfig(name="tree", root=tree, **TINY)
    work = tmp_path / "work"
    scan(config, work, quiet=True)
    before = digest_tree(tree)
    summary = flag_noise(config, work, quiet=True)
    manifest = read_manifest(work).set_index("path")
    assert set(OUTPUT_COLUMNS) <= set(manifest.columns)
    good = manifest[manifest["readable"]]
    assert good["noise_score"].between(0, 1).all() and good["noise_ood"].notna().all()
    assert manifest.loc["beta/broken.jpg", OUTPUT_COLUMNS].isna().all()
    assert summary["images"] == 12 and summary["embeddings"]["computed"] == 12
    assert summary["flagged"] == int(good["noise_flag"].sum())
    listed = pd.read_csv(work / "noise.csv")
    assert len(listed) == summary["flagged"]
    assert Image.open(work / "noise_scores.png").size[0] > 100
    assert read_run(work, "flag-noise")["summary"]["flagged"] == summary["flagged"]
    again = flag_noise(config, work, quiet=True)
    assert again["embeddings"]["reused"] == 12 and again["embeddings"]["computed"] == 0
    pd.testing.assert_frame_equal(read_manifest(work).set_index("path")[OUTPUT_COLUMNS],
                                  manifest[OUTPUT_COLUMNS])
    assert digest_tree(tree) == before


def test_duplicate_groups_are_judged_once_per_label():
    rows = pd.DataFrame({"path": ["a/1.jpg", "a/2.jpg", "b/3.jpg", "a/4.jpg", "c/5.jpg"],
                         "label": ["a", "a", "b", "a", None],
                         "dup_of": [None, "a/1.jpg", "a/1.jpg", None, None]})
    codes, units = judging_units(rows)
    assert codes[0] == codes[1] != codes[2]
    assert len(units) == 4
    assert units.loc[codes[0], "group"] == units.loc[codes[2], "group"]
    assert units.loc[codes[3], "group"] != units.loc[codes[0], "group"]
    assert pd.isna(units.loc[codes[4], "label"])


def test_cli_json_threshold_and_help(tree, tmp_path):
    work = tmp_path / "work"
    runner = CliRunner()
    assert runner.invoke(main, ["scan", str(tree), "--workdir", str(work), "-q"]).exit_code == 0
    args = ["flag-noise", str(tree), "--workdir", str(work), "--backbone", "mobilenet_v1_025",
            "--weights", "none", "--json"]
    result = runner.invoke(main, [*args, "--max-flag-rate", "0.1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["flagged"] <= 1 and summary["backbone"] == "mobilenet_v1_025"
    assert "Example:" in runner.invoke(main, ["flag-noise", "--help"]).output
    result = runner.invoke(main, ["flag-noise", str(tree), "--workdir", str(work),
                                  "--noncar-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--audit" in result.output


def test_offline_imagenet_without_a_weights_file_is_one_clear_message(tree, tmp_path,
                                                                    monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    monkeypatch.setenv("CURATE_WEIGHTS", str(tmp_path / "no-weights-here"))
    work = tmp_path / "work"
    CliRunner().invoke(main, ["scan", str(tree), "--workdir", str(work), "-q"])
    result = CliRunner().invoke(main, ["flag-noise", str(tree), "--workdir", str(work),
                                       "--backbone", "mobilenet_v1_025", "--weights", "imagenet"])
    assert result.exit_code == 1
    assert "Pass --weights PATH" in result.output and "CURATE_WEIGHTS" in result.output
    assert "Traceback" not in result.output


CLASSES = ["Volvo_240_Sedan_1993", "Lamborghini_Aventador_Coupe_2012",
           "Honda_Odyssey_Minivan_2012", "Dodge_Ram_Pickup_3500_Crew_Cab_2010"]


@pytest.mark.real_data
@pytest.mark.weights
@pytest.mark.slow
def test_real_photos_planted_non_car_and_wrong_folder_are_flagged(curate_data, curate_weights,
                                                                  tmp_path):
    """4 Stanford Cars classes (30 each) with 6 non-car photos and 4 cars in a wrong folder."""
    root = tmp_path / "cars"
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for path in sorted((curate_data / "stanford-cars-25" / label).glob("*.jpg"))[:30]:
            shutil.copyfile(path, root / label / path.name)
    non_car = sorted((curate_data / "non-car").glob("*.jpg"))[::40][:6]
    for k, path in enumerate(non_car):
        shutil.copyfile(path, root / CLASSES[k % 2] / f"zz_{path.name}")
    moved = {}
    for k in range(4):
        source, target = CLASSES[k], CLASSES[(k + 1) % 4]
        name = sorted((root / source).glob("*.jpg"))[10 + k].name
        shutil.move(root / source / name, root / target / name)
        moved[f"{target}/{name}"] = source
    config = DatasetConfig(name="cars", root=root, image_size=224, backbone="mobilenet_v2",
                           weights="imagenet")
    work = tmp_path / "work"
    scan(config, work, quiet=True)
    flag_noise(config, work, quiet=True)
    manifest = read_manifest(work).set_index("path")
    manifest[["noise_reason", "suggested_label"]] = manifest[["noise_reason",
                                                              "suggested_label"]].fillna("-")
    planted_non_car = [f"{CLASSES[k % 2]}/zz_{p.name}" for k, p in enumerate(non_car)]
    assert (manifest.loc[planted_non_car, "noise_reason"] == "non_car").all()
    hits = [p for p, truth in moved.items() if manifest.at[p, "noise_reason"] == "mislabel"
            and manifest.at[p, "suggested_label"] == truth]
    assert len(hits) >= 3, manifest.loc[list(moved), ["noise_reason", "suggested_label"]]
    clean = manifest[manifest.index.str.startswith(CLASSES[2] + "/")
                     & ~manifest.index.isin(list(moved))]
    assert clean["noise_flag"].mean() <= 0.1
    assert not clean["noise_reason"].eq("non_car").any()
    assert np.isfinite(manifest["noise_given_prob"].dropna()).all()
