"""Leak check: duplicate groups crossing splits, on in-memory columns and through `check-leaks`."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main
from curation.config import DatasetConfig
from curation.leaks import find_leaks, leak_report, leaking_mask
from curation.manifest import ManifestMissing, read_manifest, read_run, write_manifest
from curation.split.check_leaks import check_leaks, describe
from curation.vocabulary import exact_groups


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "dup_group", "split"]).astype({"dup_group": "Int64"})


def test_a_group_across_three_splits_counts_in_every_pair():
    manifest = frame([("a", 1, "train"), ("b", 1, "val"), ("c", 1, "test"), ("d", 1, "test"),
                      ("e", 2, "train"), ("f", 2, "train"), ("g", None, "test")])
    report = leak_report(manifest)
    assert report["pairs"] == {"train/val": 1, "train/test": 1, "val/test": 1}
    assert report["leaking_groups"] == 1 and report["leaking_images"] == 4
    assert report["groups"] == [{"group": 1, "splits": {"train": ["a"], "val": ["b"], "test": ["c", "d"]}}]


def test_excluded_and_unassigned_members_never_leak():
    manifest = frame([("a", 1, "train"), ("b", 1, "excluded"), ("c", 1, None),
                      ("d", 2, "test"), ("e", 2, "excluded")])
    assert not leaking_mask(manifest["dup_group"], manifest["split"]).any()
    assert leak_report(manifest)["pairs"] == {}


def test_works_on_given_split_names():
    manifest = frame([("train/x/1.jpg", 3, "train"), ("validation/x/1.jpg", 3, "validation"),
                      ("test/x/1.jpg", 4, "test"), ("train/x/2.jpg", 4, "train")])
    manifest = manifest.rename(columns={"split": "given_split"})
    report = leak_report(manifest, "given_split", max_listed=1)
    assert report["pairs"] == {"train/validation": 1, "train/test": 1}
    assert report["column"] == "given_split" and len(report["groups"]) == 1
    assert list(find_leaks(manifest["path"], manifest["dup_group"], manifest["given_split"])["split"]) \
        == ["train", "validation", "train", "test"]


def test_exact_groups_join_identical_bytes_only():
    groups = exact_groups(["x", "y", "x", None, "z", "y"])
    assert groups.isna().tolist() == [False, False, False, True, True, False]
    assert groups[0] == groups[2] != groups[1] == groups[5]


@pytest.fixture
def given_tree(tmp_path, make_image):
    """train/test folders where one test image is a byte copy of a train image; scanned."""
    from curation.scan.step import scan

    root = tmp_path / "data"
    for given in ("train", "test"):
        for i in range(3):
            make_image(root / given / "swift" / f"{i}.jpg", seed=(10 if given == "train" else 20) + i)
    shutil.copy(root / "train" / "swift" / "0.jpg", root / "test" / "swift" / "copy.jpg")
    config = DatasetConfig(name="g", root=root)
    scan(config, tmp_path / "w", workers=1, quiet=True)
    return config, tmp_path / "w"


def test_check_leaks_falls_back_to_given_split_and_byte_groups(given_tree):
    config, work = given_tree
    report = check_leaks(config, work)
    assert report["column"] == "given_split" and report["groups_from"].startswith("sha256")
    assert report["groups"] == [{"group": report["groups"][0]["group"],
                                 "splits": {"train": ["train/swift/0.jpg"], "test": ["test/swift/copy.jpg"]}}]
    assert "train/swift/0.jpg" in describe(report)
    record = read_run(work, "check-leaks")
    assert record["summary"]["leaking_groups"] == 1 and record["settings"] == {"column": None}
    with pytest.raises(ManifestMissing, match="no 'split' values"):
        check_leaks(config, work, "split")


def test_check_leaks_without_any_grouping_column_finds_nothing(tmp_path):
    write_manifest(pd.DataFrame({"path": ["a.jpg", "b.jpg"], "split": ["train", "test"]}), tmp_path)
    report = check_leaks(DatasetConfig(name="t", root=tmp_path), tmp_path, None)
    assert report["leaking_groups"] == 0 and report["groups_from"].startswith("sha256")


def test_check_leaks_uses_dedupe_groups_and_split_column(given_tree):
    config, work = given_tree
    manifest = read_manifest(work)
    manifest["dup_group"] = pd.array([7 if p.endswith("1.jpg") else None for p in manifest["path"]],
                                     dtype="Int64")
    manifest["split"] = ["train" if p.startswith("train") else "val" for p in manifest["path"]]
    write_manifest(manifest, work)
    report = check_leaks(config, work)
    assert report["column"] == "split" and report["groups_from"] == "dedupe"
    assert report["pairs"] == {"train/val": 1}


def test_cli_exits_1_and_lists_groups_then_0_after_a_split(given_tree):
    config, work = given_tree
    root = config.root
    runner = CliRunner()
    result = runner.invoke(main, ["check-leaks", str(root), "--workdir", str(work)])
    assert result.exit_code == 1 and "test/swift/copy.jpg" in result.output
    result = runner.invoke(main, ["check-leaks", str(root), "--workdir", str(work), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["pairs"] == {"train/test": 1}
    assert runner.invoke(main, ["split", str(root), "--workdir", str(work), "-q"]).exit_code == 0
    result = runner.invoke(main, ["check-leaks", str(root), "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    assert "No duplicate group crosses the splits in 'split'" in result.output
