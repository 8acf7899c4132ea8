"""Review tags: which flags a sample shows, and how a reviewer's tags and labels become decisions."""
from __future__ import annotations

import pandas as pd
import pytest

from curation.review.tags import (decision_tags, flag_tags, group_badges, read_decision,
                                  read_decisions, reason_tags, sample_fields)

CLASSES = ["Audi", "Swift", "TataSafari"]


def test_reason_tags_reads_flag_names_in_any_spelling():
    assert reason_tags("non-car; outlier") == ["non_car", "outlier"]
    assert reason_tags("Mislabelled (suggest Swift)") == ["mislabel"]
    assert reason_tags("label_issue,noncar") == ["mislabel", "non_car"]
    assert reason_tags(None) == [] and reason_tags(float("nan")) == [] and reason_tags("blurry") == []


def test_flag_tags_mark_non_keepers_of_real_groups_and_flagged_noise_only():
    frame = pd.DataFrame({
        "dup_group": pd.array([0, 0, 1, None, None], dtype="Int64"),
        "dup_keeper": pd.array([True, False, False, None, None], dtype="boolean"),
        "noise_flag": [False, False, False, True, False],
        "noise_reason": ["mislabel", None, None, "non_car, outlier", "mislabel"],
    })
    # group 1 has a single member: not a duplicate; row 4 has a reason but no flag
    assert flag_tags(frame) == [[], ["duplicate"], [], ["non_car", "outlier"], []]


def test_flag_tags_without_optional_columns_are_empty():
    assert flag_tags(pd.DataFrame({"path": ["a", "b"]})) == [[], []]


def test_sample_fields_skip_unreadable_and_mark_groups_crossing_splits():
    manifest = pd.DataFrame({
        "path": ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg", "b/bad.jpg"],
        "label": ["a", "a", "b", "b", "b"],
        "readable": [True, True, True, True, False],
        "given_split": ["train", "test", "train", "train", "test"],
        "dup_group": pd.array([0, 0, 1, 1, None], dtype="Int64"),
        "dup_keeper": pd.array([True, False, True, False, None], dtype="boolean"),
        "split": ["train", "train", "val", "excluded", None],
    })
    fields = sample_fields(manifest)
    assert list(fields["path"]) == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]
    assert list(fields["leaks_given_split"]) == [True, True, False, False]
    assert list(fields["leaks_split"]) == [False, False, False, False]   # excluded never leaks
    assert list(fields["dup_group_size"]) == [2, 2, 2, 2]
    assert list(fields["flags"]) == [[], ["duplicate"], [], ["duplicate"]]
    assert list(fields["duplicate_group"]) == ["group 0 keeper", "group 0", "group 1 keeper",
                                               "group 1"]


def test_sample_fields_of_a_bare_scan_have_no_group_columns():
    manifest = pd.DataFrame({"path": ["a/1.jpg"], "label": ["a"], "readable": [True],
                             "given_split": [None]})
    fields = sample_fields(manifest)
    assert "dup_group_size" not in fields and "leaks_given_split" not in fields


def test_group_badges_only_for_groups_of_two_or_more():
    groups = pd.Series(pd.array([3, 3, 5, None], dtype="Int64"))
    keepers = pd.Series(pd.array([False, True, True, None], dtype="boolean"))
    badges = group_badges(groups, keepers)
    assert badges.tolist()[:2] == ["group 3", "group 3 keeper"] and badges[2:].isna().all()


@pytest.mark.parametrize("tags, current, suggested, expected", [
    ([], "Audi", None, (None, None, None)),
    (["duplicate", "mislabel"], "Audi", "Swift", (None, None, None)),
    (["keep"], "Audi", None, ("keep", None, None)),
    (["DROP "], "Audi", None, ("drop", None, None)),
    (["relabel:Swift"], "Audi", None, ("relabel", "Swift", None)),
    (["relabel:tatasafari"], "Audi", None, ("relabel", "TataSafari", None)),
    (["relabel"], "Audi", "Swift", ("relabel", "Swift", None)),
    (["relabel:Audi"], "Audi", None, ("keep", None, None)),            # same class: a keep
    ([], "Swift", None, ("relabel", "Swift", None)),                    # ground_truth edited
    (["relabel:Swift", "keep"], "Swift", None, ("relabel", "Swift", None)),
])
def test_read_decision_rules(tags, current, suggested, expected):
    assert read_decision(tags, current, "Audi", suggested, CLASSES) == expected


@pytest.mark.parametrize("tags, current, suggested, problem", [
    (["drop", "keep"], "Audi", None, "tagged drop and also keep or relabel"),
    (["drop"], "Swift", None, "tagged drop and also keep or relabel"),
    (["relabel:Mercedes"], "Audi", None, "names no class"),
    (["relabel"], "Audi", None, "suggested no label"),
    (["relabel:Swift"], "TataSafari", None, "conflicting new labels"),
    ([], "Merc", None, "edited to 'Merc', which is no class"),
])
def test_read_decision_reports_contradictions_and_records_nothing(tags, current, suggested,
                                                                  problem):
    decision, label, found = read_decision(tags, current, "Audi", suggested, CLASSES)
    assert (decision, label) == (None, None) and problem in found


@pytest.mark.parametrize("decision, label", [("keep", None), ("drop", None), ("relabel", "Swift"),
                                             (None, None)])
def test_decision_tags_read_back_as_the_same_decision(decision, label):
    tags = decision_tags(decision, label)
    assert read_decision(tags, "Audi", "Audi", None, CLASSES)[:2] == (decision, label)


def test_read_decisions_over_a_frame():
    samples = pd.DataFrame({"path": ["x", "y", "z"], "tags": [["drop"], [], ["relabel"]],
                            "current_label": ["Audi", "Swift", "Audi"],
                            "given_label": ["Audi", "Audi", "Audi"],
                            "suggested_label": [None, None, None]})
    decided = read_decisions(samples, CLASSES)
    assert decided["review_decision"].tolist()[:2] == ["drop", "relabel"]
    assert pd.isna(decided["review_decision"][2]) and "suggested no label" in decided["review_problem"][2]
    assert decided["review_label"][1] == "Swift"
