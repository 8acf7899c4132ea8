"""The report's "planted vs found" section for a synthetic set made by `curate demo`: how much
of what curation/demo/synthetic.py planted (ground_truth.json beside the images) a run found,
read from the manifest's columns."""
from __future__ import annotations

import json

import pandas as pd

from curation.config import DatasetConfig
from curation.leaks import leak_report
from curation.report import html_page as h
from curation.report.context import Context


def synthetic_truth(config: DatasetConfig) -> dict | None:
    """The ground truth of a synthetic set made by `curate demo`, when the dataset is one."""
    path = config.root.parent / "ground_truth.json"
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    return truth if truth.get("synthetic") else None


def truth_section(ctx: Context) -> str:
    scores = score(ctx.manifest, synthetic_truth(ctx.config))
    rows = [[name.replace("_", " "), value["found"], value["planted"], value["rate"]]
            for name, value in scores.items() if isinstance(value, dict)]
    counts = [[name.replace("_", " "), value] for name, value in scores.items()
              if isinstance(value, int) and not isinstance(value, bool)]
    body = h.paragraph("What this run found of the problems `curate demo` planted "
                       "(listed in ground_truth.json beside the images).")
    body += h.table(["planted problem", "found", "planted", "rate"], rows)
    return body + (h.table(["check", "count"], counts) if counts else "")


def score(manifest: pd.DataFrame, truth: dict) -> dict:
    """How much of what was planted a pipeline run found, from the manifest's columns.

    Each part appears when the columns it needs exist: duplicates (`dup_group`), noise
    (`noise_flag`, `noise_reason`, `suggested_label`), leaks (`split`), unreadable (`readable`).
    """
    frame = manifest.set_index("path")
    result: dict = {"synthetic": True}
    result["unreadable_found"] = _share(frame, [d["path"] for d in truth["unreadable"]],
                                        lambda rows: ~rows["readable"].astype(bool))
    if "dup_group" in frame.columns:
        group = frame["dup_group"]
        for kind in ("exact_duplicates", "near_duplicates"):
            pairs = [(d["path"], d["of"]) for d in truth[kind]
                     if {d["path"], d["of"]} <= set(frame.index)]
            found = sum(pd.notna(group[a]) and group[a] == group[b] for a, b in pairs)
            result[f"{kind}_found"] = _ratio(found, len(pairs))
        source = {d["path"]: d["of"] for kind in ("exact_duplicates", "near_duplicates")
                  for d in truth[kind]}
        members = frame[group.notna()].assign(source=lambda f: [source.get(p, p) for p in f.index])
        sources = members.groupby("dup_group")["source"].nunique()
        result["false_duplicate_groups"] = int((sources > 1).sum())
    if "noise_flag" in frame.columns:
        flagged = frame["noise_flag"].fillna(False).astype(bool)
        planted = {"mislabels": "mislabel", "off_topic": "non_car"}
        noise_paths = set()
        for kind, reason in planted.items():
            paths = [d["path"] for d in truth[kind] if d["path"] in frame.index]
            noise_paths.update(paths)
            result[f"{kind}_flagged"] = _ratio(int(flagged[paths].sum()), len(paths))
            right = int((frame.loc[paths, "noise_reason"] == reason).sum())
            result[f"{kind}_reason_right"] = _ratio(right, len(paths))
        result["noise_flags"] = int(flagged.sum())
        result["noise_precision"] = _ratio(len(noise_paths & set(frame.index[flagged])),
                                           int(flagged.sum()))
        if "suggested_label" in frame.columns:
            rows = [d for d in truth["mislabels"] if d["path"] in frame.index]
            right = sum(str(frame.at[d["path"], "suggested_label"]) == d["true_label"]
                        for d in rows)
            result["mislabels_suggestion_right"] = _ratio(right, len(rows))
    if "split" in frame.columns and "dup_group" in frame.columns:
        result["leaking_groups_after_split"] = leak_report(manifest, "split")["leaking_groups"]
    return result


def _share(frame: pd.DataFrame, paths: list[str], test) -> dict:
    present = [p for p in paths if p in frame.index]
    return _ratio(int(test(frame.loc[present]).sum()) if present else 0, len(present))


def _ratio(found: int, planted: int) -> dict:
    found, planted = int(found), int(planted)
    return {"found": found, "planted": planted,
            "rate": round(found / planted, 3) if planted else None}
