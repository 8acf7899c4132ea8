"""Review tags, pure: the flags curate shows a reviewer and the decisions a reviewer gives back.

Manifest rows in, per-sample field values and tags out (`sample_fields`); a reviewer's tags
and labels in, `review_decision` / `review_label` out (`read_decisions`). No FiftyOne, no disk.

How a reviewer decides (the contract `curate review --sync` reads):
  tag `drop`              leave the image out of every split
  tag `keep`              keep it as it is (overrides a noise flag)
  tag `relabel:<class>`   keep it with class <class> (one of the dataset's classes)
  tag `relabel`           keep it with the suggested label from `flag-noise`
  edit `ground_truth`     (Python or an annotation tool) same as `relabel:<new label>`
Contradictions (drop with keep or relabel, two different new labels, unknown classes) are
reported and record no decision for that image until the tags are fixed.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from curation.leaks import leaking_mask

FLAG_TAGS = ("duplicate", "non_car", "mislabel", "outlier")
KEEP, DROP, RELABEL = "keep", "drop", "relabel"
RELABEL_PREFIX = "relabel:"
DECISIONS = (KEEP, DROP, RELABEL)
_REASON_TAGS = {"non_car": "non_car", "noncar": "non_car", "not_car": "non_car",
                "mislabel": "mislabel", "mislabeled": "mislabel", "mislabelled": "mislabel",
                "label_issue": "mislabel", "outlier": "outlier"}
FIELD_COLUMNS = ["given_split", "split", "dup_group", "dup_keeper", "dup_of", "dup_distance",
                 "dup_reason", "noise_score", "noise_flag", "noise_reason", "suggested_label"]


def reason_tags(reason) -> list[str]:
    """Flag tags named in a `noise_reason` cell ('non-car; outlier' -> ['non_car', 'outlier'])."""
    if reason is None or reason is pd.NA or (isinstance(reason, float) and np.isnan(reason)):
        return []
    words = re.split(r"[^a-z_]+", str(reason).lower().replace("-", "_"))
    return sorted({_REASON_TAGS[w] for w in words if w in _REASON_TAGS})


def _column(frame: pd.DataFrame, name: str, dtype: str) -> pd.Series:
    if name in frame.columns:
        return frame[name].astype(dtype)
    return pd.Series(pd.NA, index=frame.index, dtype=dtype)


def group_sizes(groups: pd.Series) -> pd.Series:
    """How many images share each row's duplicate group (1 for an ungrouped image)."""
    groups = groups.astype("Int64")
    counts = groups.map(groups.value_counts())
    return counts.fillna(1).astype("int64")


def group_badges(groups: pd.Series, keepers: pd.Series) -> pd.Series:
    """'group 7' / 'group 7 keeper' for members of real groups, so tiles show where groups part."""
    sizes = group_sizes(groups)
    badges = "group " + groups.astype("string") + keepers.fillna(False).map({True: " keeper",
                                                                               False: ""})
    return badges.where(sizes > 1).astype("string")


def flag_tags(frame: pd.DataFrame) -> list[list[str]]:
    """The flag tags of each row: `duplicate` for a non-keeper in a group of two or more,
    and `non_car` / `mislabel` / `outlier` from `noise_reason` where `noise_flag` is set."""
    grouped = (group_sizes(_column(frame, "dup_group", "Int64")) > 1).to_numpy()
    keeper = _column(frame, "dup_keeper", "boolean").fillna(False).to_numpy(bool)
    flagged = (_column(frame, "noise_flag", "boolean").fillna(False).to_numpy(bool)
               if "noise_flag" in frame.columns else np.ones(len(frame), bool))
    reasons = _column(frame, "noise_reason", "string")
    tags = []
    for is_dup, is_flagged, reason in zip(grouped & ~keeper, flagged, reasons):
        row = ["duplicate"] if is_dup else []
        row += reason_tags(reason) if is_flagged else []
        tags.append(row)
    return tags


def sample_fields(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per readable image: the values curate writes onto its FiftyOne sample.

    Columns: path, label, width, height, bytes, every FIELD_COLUMNS column the manifest has,
    and flags (list of FLAG_TAGS); with duplicate groups also dup_group_size,
    duplicate_group (the tile badge) and leaks_given_split / leaks_split (the image's group spans
    two splits).
    """
    rows = manifest[manifest["readable"].astype("boolean").fillna(False)].reset_index(drop=True)
    present = [c for c in FIELD_COLUMNS if c in rows.columns]
    fields = rows[["path", "label", *[c for c in ("width", "height", "bytes") if c in rows],
                   *present]].copy()
    if "dup_group" in rows.columns:
        groups = rows["dup_group"].astype("Int64")
        fields["dup_group_size"] = group_sizes(groups)
        fields["duplicate_group"] = group_badges(groups, _column(rows, "dup_keeper", "boolean"))
        for split_column in ("given_split", "split"):
            if split_column in rows.columns and rows[split_column].notna().any():
                fields[f"leaks_{split_column}"] = leaking_mask(groups, rows[split_column])
    fields["flags"] = flag_tags(rows)
    return fields


def decision_tags(decision, label) -> list[str]:
    """The tags that express a recorded decision (seeds samples created after a sync)."""
    if not isinstance(decision, str):
        return []
    if decision in (KEEP, DROP):
        return [decision]
    if decision == RELABEL and isinstance(label, str):
        return [RELABEL_PREFIX + label]
    return []


def match_class(name: str, classes) -> str | None:
    """`name` as one of `classes`: exact, else the one case-insensitive match, else None."""
    if name in classes:
        return name
    folded = [c for c in classes if c.casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def _new_labels(tags, current_label, given_label, suggested_label, classes
                ) -> tuple[set[str], list[str]]:
    """The labels a reviewer asked for (other than the given one), and what could not be read."""
    wanted, problems = set(), []
    for tag in tags:
        if tag.lower().startswith(RELABEL_PREFIX):
            matched = match_class(tag[len(RELABEL_PREFIX):].strip(), classes)
            if matched:
                wanted.add(matched)
            else:
                problems.append(f"tag {tag!r} names no class of this dataset")
        elif tag.lower() == RELABEL:
            if isinstance(suggested_label, str):
                wanted.add(suggested_label)
            else:
                problems.append("tag 'relabel' but flag-noise suggested no label; "
                                "tag 'relabel:<class>' instead")
    if isinstance(current_label, str) and current_label != given_label:
        matched = match_class(current_label, classes)
        if matched:
            wanted.add(matched)
        else:
            problems.append(f"ground_truth was edited to {current_label!r}, "
                            f"which is no class of this dataset")
    wanted.discard(given_label)
    return wanted, problems


def read_decision(tags, current_label, given_label, suggested_label, classes
                  ) -> tuple[str | None, str | None, str | None]:
    """(review_decision, review_label, problem) for one sample; problem explains a None decision."""
    tags = [t.strip() for t in tags or []]
    words = {t.lower() for t in tags}
    wanted, problems = _new_labels(tags, current_label, given_label, suggested_label, classes)
    if len(wanted) > 1:
        problems.append(f"conflicting new labels {sorted(wanted)}")
    if DROP in words and (KEEP in words or wanted):
        problems.append("tagged drop and also keep or relabel")
    if problems:
        return None, None, "; ".join(problems)
    if DROP in words:
        return DROP, None, None
    if wanted:
        return RELABEL, wanted.pop(), None
    if KEEP in words or any(w.startswith(RELABEL) for w in words):
        return KEEP, None, None
    return None, None, None


def read_decisions(samples: pd.DataFrame, classes) -> pd.DataFrame:
    """Decisions for many samples.

    samples: columns path, tags (list of str), current_label (ground_truth now), given_label
    (the label curate loaded), suggested_label. Returns path, review_decision, review_label,
    review_problem.
    """
    classes = sorted(set(classes))
    suggested = samples["suggested_label"] if "suggested_label" in samples else [None] * len(samples)
    rows = [read_decision(tags, current, given, suggestion, classes)
            for tags, current, given, suggestion in zip(
                samples["tags"], samples["current_label"], samples["given_label"], suggested)]
    decided = pd.DataFrame(rows, columns=["review_decision", "review_label", "review_problem"],
                           dtype="string")
    decided.insert(0, "path", samples["path"].astype("string").to_numpy())
    return decided
