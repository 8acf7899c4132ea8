"""`curate split`: properties of the group-aware stratified assignment, the exclusion policy, and
the step on generated image folders."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.config import ConfigError, DatasetConfig
from curation.leaks import leaking_mask
from curation.manifest import read_manifest, read_run, write_manifest
from curation.scan.step import scan
from curation.split.step import (SPLITS, assign_splits, exclusion_reasons, split, target_counts,
                            unify_groups)

RATIOS = st.sampled_from([(0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.2, 0.0), (0.5, 0.25, 0.25),
                          (1 / 3, 1 / 3, 1 / 3), (0.9, 0.05, 0.05)])


@st.composite
def labelled_groups(draw, max_images=120, cross_label=True):
    """Random labels and random duplicate groups (null = unique); groups may span labels."""
    n = draw(st.integers(1, max_images))
    labels = draw(st.lists(st.sampled_from("abcdefg"), min_size=n, max_size=n))
    groups = draw(st.lists(st.one_of(st.none(), st.integers(0, max(1, n // 4))), min_size=n, max_size=n))
    if not cross_label:
        groups = [None if g is None else f"{g}{label}" for g, label in zip(groups, labels)]
        groups = pd.Series(groups).map({g: i for i, g in enumerate(sorted(set(groups) - {None}))})
    return np.array(labels), pd.array(groups, dtype="Int64")


def deviations(labels, splits, ratios) -> pd.DataFrame:
    """|count − ratio × class size| per class (rows) and split (columns)."""
    table = pd.crosstab(pd.Series(labels), pd.Series(splits)).reindex(columns=list(SPLITS), fill_value=0)
    return (table - np.outer(table.sum(axis=1), ratios)).abs()


@settings(max_examples=150, deadline=None)
@given(data=labelled_groups(), ratios=RATIOS, seed=st.integers(0, 2**16))
def test_no_group_crosses_splits_and_zero_ratio_splits_stay_empty(data, ratios, seed):
    labels, groups = data
    splits = assign_splits(labels, groups, ratios, seed)
    assert set(splits) <= {s for s, r in zip(SPLITS, ratios) if r > 0}
    assert not leaking_mask(groups, splits).any()


@settings(max_examples=100, deadline=None)
@given(data=labelled_groups(), ratios=RATIOS, seed=st.integers(0, 2**16))
def test_same_seed_same_split(data, ratios, seed):
    labels, groups = data
    first = assign_splits(labels, groups, ratios, seed)
    assert list(first) == list(assign_splits(labels, groups, ratios, seed))


@settings(max_examples=150, deadline=None)
@given(data=labelled_groups(), ratios=RATIOS, seed=st.integers(0, 2**16))
def test_ungrouped_classes_land_within_one_image_of_target(data, ratios, seed):
    labels, _ = data
    splits = assign_splits(labels, None, ratios, seed)
    assert (deviations(labels, splits, ratios).to_numpy() < 1).all()


@settings(max_examples=150, deadline=None)
@given(data=labelled_groups(cross_label=False), ratios=RATIOS, seed=st.integers(0, 2**16))
def test_grouped_classes_miss_target_by_less_than_their_largest_group(data, ratios, seed):
    labels, groups = data
    splits = assign_splits(labels, groups, ratios, seed)
    sizes = pd.Series(groups).value_counts()
    largest = pd.Series([sizes.get(g, 1) if not pd.isna(g) else 1 for g in groups]).groupby(labels).max()
    gap = deviations(labels, splits, ratios).max(axis=1)
    assert (gap < largest.reindex(gap.index).clip(lower=1)).all(), (gap, largest)


@settings(max_examples=100, deadline=None)
@given(base=labelled_groups(max_images=60), extra=labelled_groups(max_images=40), ratios=RATIOS,
       seed=st.integers(0, 2**16), joined=st.integers(0, 3))
def test_existing_images_keep_their_split_when_images_are_added(base, extra, ratios, seed, joined):
    labels, groups = base
    before = assign_splits(labels, groups, ratios, seed)
    new_labels, new_groups = extra
    new_groups = pd.array([None if pd.isna(g) else g + 1000 for g in new_groups], dtype="Int64")
    joined = min(joined, len(labels), len(new_labels))
    new_groups[:joined] = groups[:joined]          # some new images duplicate existing ones
    all_labels = np.concatenate([labels, new_labels])
    all_groups = pd.array([*groups, *new_groups], dtype="Int64")
    previous = [*before, *[None] * len(new_labels)]
    after = assign_splits(all_labels, all_groups, ratios, seed + 1, previous)
    assert list(after[:len(labels)]) == list(before)
    assert not leaking_mask(all_groups, after).any()


def test_targets_sum_to_class_sizes_and_small_classes_go_to_train_first():
    targets = target_counts([1, 2, 10, 7, 0], (0.6, 0.2, 0.2))
    assert targets.sum(axis=1).tolist() == [1, 2, 10, 7, 0]
    assert targets[0].tolist() == [1, 0, 0] and targets[2].tolist() == [6, 2, 2]
    assert targets[1, 0] == 1


def test_leftovers_of_many_small_classes_spread_over_val_and_test():
    targets = target_counts([2] * 40, (0.6, 0.2, 0.2), seed=3)
    assert targets[:, 0].tolist() == [1] * 40
    assert targets[:, 1].sum() == targets[:, 2].sum() == 20


def test_conflicting_group_goes_to_the_first_split_it_touches():
    groups = pd.array([1, 1, 1, 2, 2, 3, 3, None, None], dtype="Int64")
    previous = ["test", "val", None, "test", "train", "excluded", None, "test", None]
    assert list(unify_groups(previous, groups)) == ["val", "val", "val", "train", "train", None, None,
                                                    "test", None]


def test_group_with_a_previous_split_pulls_its_new_members_along():
    splits = assign_splits(list("aaaa"), pd.array([5, 5, None, None], dtype="Int64"), (0.5, 0.5, 0),
                           previous=["val", None, None, None])
    assert splits[0] == splits[1] == "val"


def test_labels_must_be_present():
    with pytest.raises(ValueError, match="label"):
        assign_splits(["a", None], None)


def policy_frame() -> pd.DataFrame:
    """One image per exclusion case, plus a duplicate group whose keeper the reviewer dropped."""
    rows = [  # path, label, readable, noise_flag, review_decision, review_label, width, group, keeper
        ("bad.jpg", "a", False, False, None, None, 100, None, False),
        ("loose.jpg", None, True, False, None, None, 100, None, False),
        ("dropped.jpg", "a", True, False, "drop", None, 100, None, False),
        ("noisy.jpg", "a", True, True, None, None, 100, None, False),
        ("noisy_kept.jpg", "a", True, True, "keep", None, 100, None, False),
        ("relabelled.jpg", "a", True, True, "relabel", "b", 100, None, False),
        ("g_keeper.jpg", "a", True, False, "drop", None, 300, 7, True),
        ("g_big.jpg", "a", True, False, None, None, 200, 7, False),
        ("g_small.jpg", "a", True, False, None, None, 100, 7, False),
    ]
    frame = pd.DataFrame(rows, columns=["path", "label", "readable", "noise_flag", "review_decision",
                                        "review_label", "width", "dup_group", "dup_keeper"])
    frame["height"], frame["bytes"] = 100, 1000
    frame["dup_group"] = frame["dup_group"].astype("Int64")
    return frame


def test_exclusion_rules_each_name_their_images():
    from curation.split.step import effective_labels

    frame = policy_frame()
    frame["split_label"] = effective_labels(frame)
    assert frame.set_index("path").loc["relabelled.jpg", "split_label"] == "b"
    reasons = exclusion_reasons(frame, frame["dup_group"], frame["dup_keeper"])
    assert dict(zip(frame["path"], reasons.fillna("used"))) == {
        "bad.jpg": "unreadable", "loose.jpg": "unlabelled", "dropped.jpg": "dropped",
        "noisy.jpg": "noise", "noisy_kept.jpg": "used", "relabelled.jpg": "used",
        "g_keeper.jpg": "dropped", "g_big.jpg": "used", "g_small.jpg": "duplicate"}
    loose = exclusion_reasons(frame, frame["dup_group"], frame["dup_keeper"], exclude=("dropped",),
                              keep_duplicates=True)
    assert loose.isna().sum() == 6 and set(loose.dropna()) == {"unlabelled", "dropped"}
    with pytest.raises(ConfigError, match="unknown exclude rule"):
        exclusion_reasons(frame, frame["dup_group"], exclude=("blurry",))


# ---- the step on generated folders -------------------------------------------------------------

@pytest.fixture
def scanned(tmp_path, class_tree):
    """The 3 × 4 class tree plus a byte copy of alpha/0.jpg in beta, scanned."""
    root = class_tree
    shutil.copy(root / "alpha" / "0.jpg", root / "beta" / "copy_of_alpha0.jpg")
    config = DatasetConfig(name="toy", root=root, ratios=(0.5, 0.25, 0.25))
    scan(config, tmp_path / "work", workers=1, quiet=True)
    return config, tmp_path / "work"


def test_split_writes_columns_csv_and_run_record(scanned):
    config, work = scanned
    summary = split(config, work, quiet=True)
    manifest = read_manifest(work).set_index("path")
    assert summary["excluded_by"]["duplicate"] == 1
    assert manifest.loc["beta/copy_of_alpha0.jpg", "split"] == "excluded"
    assert manifest.loc["beta/copy_of_alpha0.jpg", "split_excluded_by"] == "duplicate"
    assert summary["classes"]["alpha"] == {"train": 2, "val": 1, "test": 1, "excluded": 0}
    assert summary["leaks"]["leaking_groups"] == 0 and summary["max_deviation"] < 1
    assert summary["empty_splits"] == {}
    csv = pd.read_csv(work / "splits.csv")
    assert list(csv.columns) == ["path", "label", "split", "dup_group", "excluded_by"]
    assert len(csv) == 13 and read_run(work, "split")["settings"]["seed"] == 0


def test_keep_duplicates_puts_them_in_their_keepers_split(scanned):
    config, work = scanned
    split(config, work, keep_duplicates=True, quiet=True)
    manifest = read_manifest(work).set_index("path")
    assert manifest.loc["beta/copy_of_alpha0.jpg", "split"] == manifest.loc["alpha/0.jpg", "split"]
    assert (manifest["split"] != "excluded").all()


def test_dedupe_groups_are_used_when_present(scanned):
    config, work = scanned
    manifest = read_manifest(work)
    near = manifest["path"].isin(["gamma/1.jpg", "gamma/2.jpg", "gamma/3.jpg"])
    manifest["dup_group"] = pd.array(np.where(near, 4, None), dtype="Int64")
    manifest["dup_keeper"] = manifest["path"] == "gamma/3.jpg"
    write_manifest(manifest, work)
    summary = split(config, work, keep_duplicates=True, quiet=True)
    result = read_manifest(work).set_index("path")["split"]
    assert summary["groups"]["source"] == "dedupe"
    assert result["gamma/1.jpg"] == result["gamma/2.jpg"] == result["gamma/3.jpg"] != "excluded"
    assert summary["splits"]["excluded"] == 0   # the byte copy is not a dedupe group here


def test_added_images_are_placed_and_old_ones_stay(scanned, make_image):
    config, work = scanned
    split(config, work, seed=4, quiet=True)
    before = read_manifest(work).set_index("path")["split"]
    for i in range(4, 10):
        make_image(config.root / "alpha" / f"{i}.jpg", seed=900 + i)
    scan(config, work, workers=1, quiet=True)
    summary = split(config, work, seed=4, quiet=True)
    after = read_manifest(work).set_index("path")["split"]
    assert after[before.index].equals(before)
    assert summary["kept"] == 12 and summary["new"] == 6 and summary["moved"] == 0
    with pytest.raises(ConfigError, match="seed=4, now seed=5.*--reshuffle"):
        split(config, work, seed=5, quiet=True)
    reshuffled = split(config, work, seed=5, reshuffle=True, quiet=True)
    assert reshuffled["kept"] == 0 and reshuffled["new"] == 18


def test_respect_given_reports_and_fixes_crossing_groups(tmp_path, make_image):
    root = tmp_path / "data"
    for g, folder in enumerate(("train", "validation", "test")):
        for c, label in enumerate(("swift", "wagonr")):
            for i in range(4):
                make_image(root / folder / label / f"{i}.jpg", seed=100 * g + 10 * c + i)
    shutil.copy(root / "train" / "swift" / "0.jpg", root / "test" / "swift" / "dup.jpg")
    config = DatasetConfig(name="given", root=root, layout="split_class_folders")
    scan(config, tmp_path / "w", workers=1, quiet=True)

    kept = split(config, tmp_path / "w", respect_given=True, keep_duplicates=True, quiet=True)
    assert kept["leaks"]["pairs"] == {"train/test": 1}
    assert kept["splits"] == {"train": 8, "val": 8, "test": 9, "excluded": 0}

    fixed = split(config, tmp_path / "w", respect_given=True, keep_duplicates=True, fix_leaks=True,
                  quiet=True)
    result = read_manifest(tmp_path / "w").set_index("path")["split"]
    assert result["train/swift/0.jpg"] == result["test/swift/dup.jpg"] == "train"
    assert fixed["leaks"]["leaking_groups"] == 0 and fixed["moved"] == 1
    assert fixed["splits"] == {"train": 9, "val": 8, "test": 8, "excluded": 0}
    assert fixed["given_leaks"]["pairs"] == {"train/test": 1}

    default = split(config, tmp_path / "w", respect_given=True, quiet=True)
    assert default["leaks"]["leaking_groups"] == 0 and default["excluded_by"]["duplicate"] == 1


def test_option_errors_name_the_problem(scanned):
    config, work = scanned
    with pytest.raises(ConfigError, match="no given split"):
        split(config, work, respect_given=True, quiet=True)
    with pytest.raises(ConfigError, match="--fix-leaks goes with --respect-given"):
        split(config, work, fix_leaks=True, quiet=True)
    with pytest.raises(ConfigError, match="ratios"):
        split(config, work, ratios="0.5,0.5,0.5", quiet=True)


def test_review_decisions_are_obeyed(scanned):
    config, work = scanned
    manifest = read_manifest(work)
    decisions = {"alpha/1.jpg": ("drop", None), "alpha/2.jpg": ("relabel", "gamma"),
                 "alpha/3.jpg": ("keep", None)}
    manifest["review_decision"] = manifest["path"].map(lambda p: decisions.get(p, (None,))[0])
    manifest["review_label"] = manifest["path"].map(lambda p: decisions.get(p, (None, None))[1])
    manifest["noise_flag"] = manifest["path"].isin(["alpha/3.jpg", "alpha/0.jpg"])
    write_manifest(manifest, work)
    summary = split(config, work, quiet=True)
    result = read_manifest(work).set_index("path")
    assert result.loc["alpha/1.jpg", "split_excluded_by"] == "dropped"
    assert result.loc["alpha/0.jpg", "split_excluded_by"] == "noise"
    assert pd.isna(result.loc["beta/copy_of_alpha0.jpg", "split_excluded_by"])  # stands in for it
    assert result.loc["alpha/3.jpg", "split"] != "excluded"
    assert (result.loc["alpha/2.jpg", "label"], result.loc["alpha/2.jpg", "split_label"]) == ("alpha", "gamma")
    assert summary["excluded_by"] == {"unreadable": 0, "unlabelled": 0, "dropped": 1, "noise": 1,
                                      "duplicate": 0}
    assert sum(summary["classes"]["gamma"][s] for s in SPLITS) == 5
    assert summary["empty_splits"] == {"alpha": ["val", "test"]}  # one alpha image is left


def test_cli_prints_the_class_table_and_materializes(scanned, tmp_path):
    import json

    from click.testing import CliRunner

    from cli import main

    config, work = scanned
    runner = CliRunner()
    base = ["split", str(config.root), "--workdir", str(work)]
    result = runner.invoke(main, [*base, "--ratios", "0.5,0.5,0", "--exclude", "none"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Split 12 of 13 images (seed 0, ratios 0.5/0.5/0): train 6, val 6, test 0")
    assert any(line.split() == ["alpha", "2", "2", "0", "0"] for line in lines)
    result = runner.invoke(main, [*base, "--reshuffle", "--seed", "2", "--json",
                                  "--materialize", str(tmp_path / "folders")])
    summary = json.loads(result.output)
    assert summary["materialized"]["files"] == summary["used"] == 12
    assert sorted(p.name for p in (tmp_path / "folders").iterdir()) == [
        ".curate-materialized.json", "test", "train", "val"]
    result = runner.invoke(main, [*base, "--materialize", str(config.root / "out")])
    assert result.exit_code == 1 and "inside the dataset root" in result.output


@pytest.mark.real_data
@pytest.mark.slow
def test_swift_wagonr_given_split_leaks_and_a_fresh_split_does_not(curate_data, tmp_path):
    from curation.config import resolve_dataset
    from curation.dedupe.step import dedupe
    from curation.split.check_leaks import check_leaks

    config = resolve_dataset("swift-wagonr")
    work = tmp_path / "work"
    scan(config, work, workers=2, quiet=True)
    dedupe(config, work, workers=2, quiet=True)

    given = check_leaks(config, work, "given_split")
    assert given["groups_from"] == "dedupe" and given["pairs"].get("train/test", 0) >= 5
    byte_copy = {"train/swift/maruti_suzuki_swift_161.jpg", "test/swift/maruti_suzuki_swift_110.jpg"}
    assert any(byte_copy <= {p for paths in g["splits"].values() for p in paths} for g in given["groups"])

    fresh = split(config, work, quiet=True)
    assert fresh["leaks"]["leaking_groups"] == 0
    assert check_leaks(config, work)["leaking_groups"] == 0
    assert fresh["given_leaks"]["leaking_groups"] == given["leaking_groups"]
    assert fresh["max_deviation"] < 1 and fresh["excluded_by"]["duplicate"] > 0
    whole = split(config, work, keep_duplicates=True, reshuffle=True, quiet=True)
    assert whole["leaks"]["leaking_groups"] == 0 and whole["splits"]["excluded"] == 0
    fixed = split(config, work, respect_given=True, keep_duplicates=True, fix_leaks=True,
                  reshuffle=True, quiet=True)
    assert fixed["leaks"]["leaking_groups"] == 0 and fixed["moved"] > 0
