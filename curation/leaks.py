"""Duplicate groups that cross splits: the leak rule of split, check-leaks, dedupe and report.

Generic over the split column (`split`, `given_split`, ...): a group leaks when its members sit in
more than one used split; `excluded` and empty cells are not used, so they never leak.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from curation.vocabulary import GROUP_COLUMN, UNUSED_SPLITS, split_sort_key


def leaking_mask(groups, splits) -> np.ndarray:
    """True for each image in a used split whose duplicate group also has members in another split."""
    frame = pd.DataFrame({"group": pd.Series(groups, dtype="Int64").to_numpy(),
                          "split": pd.Series(splits, dtype="string").to_numpy()})
    used = frame["group"].notna() & frame["split"].notna() & ~frame["split"].isin(UNUSED_SPLITS)
    spread = frame[used].groupby("group")["split"].nunique()
    crossing = spread.index[spread > 1]
    return (used & frame["group"].isin(crossing)).to_numpy(dtype=bool)


def find_leaks(paths, groups, splits) -> pd.DataFrame:
    """The leaking images as rows (group, split, path), ordered by group, split and path."""
    mask = leaking_mask(groups, splits)
    rows = pd.DataFrame({"group": pd.Series(groups, dtype="Int64").to_numpy()[mask],
                         "split": pd.Series(splits, dtype="string").to_numpy()[mask],
                         "path": pd.Series(paths, dtype="string").to_numpy()[mask]})
    rows["order"] = [split_sort_key(s) for s in rows["split"]]
    return rows.sort_values(["group", "order", "path"]).drop(columns="order").reset_index(drop=True)


def summarize_leaks(leaks: pd.DataFrame, *, column: str, max_listed: int | None = None) -> dict:
    """Counts per split pair, and each leaking group's paths by split (the first max_listed groups)."""
    pairs: dict[str, int] = {}
    listed = []
    for group, members in leaks.groupby("group", sort=True):
        by_split = {s: sorted(m["path"]) for s, m in members.groupby("split")}
        names = sorted(by_split, key=split_sort_key)
        for a, b in combinations(names, 2):
            pairs[f"{a}/{b}"] = pairs.get(f"{a}/{b}", 0) + 1
        listed.append({"group": int(group), "splits": {s: by_split[s] for s in names}})
    ordered = dict(sorted(pairs.items(), key=lambda kv: [split_sort_key(s) for s in kv[0].split("/")]))
    return {"column": column, "leaking_groups": len(listed), "leaking_images": int(len(leaks)),
            "pairs": ordered, "groups": listed if max_listed is None else listed[:max_listed]}


def leak_report(manifest: pd.DataFrame, column: str = "split", *, groups=None,
                max_listed: int | None = None) -> dict:
    """Leak summary of one split column of a manifest; groups default to its `dup_group` column."""
    if groups is None:
        groups = manifest[GROUP_COLUMN]
    leaks = find_leaks(manifest["path"], groups, manifest[column])
    return summarize_leaks(leaks, column=column, max_listed=max_listed)


def describe_leaks(report: dict, *, show: int | None = 10) -> str:
    """Lines naming the leaking groups: counts per split pair, then group by group (show: how many)."""
    if not report["leaking_groups"]:
        return f"No duplicate group crosses the splits in '{report['column']}'."
    pairs = ", ".join(f"{pair} {n}" for pair, n in report["pairs"].items())
    lines = [f"{report['leaking_groups']} duplicate group(s) ({report['leaking_images']} images) cross "
             f"the splits in '{report['column']}'; groups per split pair: {pairs}"]
    shown = report["groups"][:show]
    for entry in shown:
        parts = "; ".join(f"{s}: {', '.join(paths)}" for s, paths in entry["splits"].items())
        lines.append(f"  group {entry['group']}: {parts}")
    hidden = report["leaking_groups"] - len(shown)
    if hidden > 0:
        lines.append(f"  ... and {hidden} more groups")
    return "\n".join(lines)
