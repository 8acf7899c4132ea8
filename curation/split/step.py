"""`curate split`: stratified, group-aware, stable train/val/test assignment.

A duplicate group is placed as a unit, so no group straddles two splits; each class's counts land
within one image of ratio × class size where groups allow; a seed fixes the result; images that
already had a split keep it when new images arrive (unless reshuffled).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import ConfigError, DatasetConfig, validate_ratios
from curation.leaks import describe_leaks, leak_report
from curation.settings import SettingError, record_of, setting
from curation.split.materialize import LINK_MODES
from curation.steps import Step, Workdir, run_step
from curation.vocabulary import (EXCLUDED, GIVEN_TO_SPLIT, KEEPER_ASCENDING, KEEPER_KEYS, SPLITS,
                                 keeper_keys, manifest_groups)

EXCLUDE_RULES = ("unreadable", "noise", "dropped")
REASONS = ("unreadable", "unlabelled", "dropped", "noise", "duplicate")
SPLIT_OUTPUT_COLUMNS = ["split", "split_label", "split_excluded_by"]


# ---- pure core: arrays in, arrays out -------------------------------------------------------

def target_counts(class_sizes, ratios, seed: int = 0) -> np.ndarray:
    """Per-class integer targets (classes × 3): floor or ceil of ratio × size, summing to the size.

    A class's leftover images go to the splits with the largest fractional parts; ties go to the
    split furthest below its overall target, so small classes do not all favour one split.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    exact = np.outer(sizes, np.asarray(ratios, dtype=float))
    targets = np.floor(exact + 1e-9).astype(np.int64)
    fraction = np.round(exact - targets, 9)
    overall = np.floor(sizes.sum() * np.asarray(ratios) + 1e-9).astype(np.int64)
    spare = np.round(sizes.sum() * np.asarray(ratios) - overall, 9)
    overall[np.argsort(-spare, kind="stable")[:int(sizes.sum() - overall.sum())]] += 1
    deficit = overall - targets.sum(axis=0)
    for c in np.random.default_rng(seed).permutation(len(sizes)):
        leftover = int(sizes[c] - targets[c].sum())
        ranked = sorted((s for s in range(len(SPLITS)) if fraction[c, s] > 0),
                        key=lambda s: (-fraction[c, s], -deficit[s], s))
        for s in ranked[:leftover]:
            targets[c, s] += 1
            deficit[s] -= 1
    return targets


def unit_codes(groups) -> np.ndarray:
    """A unit id per image: members of one duplicate group share it, an ungrouped image is alone."""
    series = pd.Series(groups, dtype="Int64").reset_index(drop=True)
    codes = np.empty(len(series), dtype=np.int64)
    grouped = series.notna().to_numpy()
    codes[grouped] = pd.factorize(series[grouped])[0]
    codes[~grouped] = np.arange((~grouped).sum()) + (codes[grouped].max() + 1 if grouped.any() else 0)
    return codes


def unify_groups(splits, groups) -> np.ndarray:
    """Move every group spread over several splits into the first of train, val, test it touches.

    Resolving a leak this way only ever takes images out of val/test, never adds look-alikes of
    training images to them. Cells outside train/val/test (null, excluded) never decide; a group
    with no assigned member stays unassigned. Returns split names (object array, None = unassigned).
    """
    names = pd.Series(splits, dtype="string").reset_index(drop=True)
    rank = names.map({s: i for i, s in enumerate(SPLITS)}).astype("float").fillna(len(SPLITS))
    unit_rank = rank.groupby(unit_codes(groups)).transform("min").to_numpy().astype(int)
    return np.array([*SPLITS, None], dtype=object)[unit_rank]


def assign_splits(labels, groups=None, ratios=(0.7, 0.15, 0.15), seed: int = 0,
                  previous=None) -> np.ndarray:
    """The split name of each image: stratified by label, one split per duplicate group, seeded.

    labels: class per image (no nulls). groups: duplicate group id per image (null = unique).
    previous: a split per image to keep (null for new images); groups whose previous splits differ
    are unified by `unify_groups`. Largest groups are placed first, each where it overshoots its
    classes' targets least; single images then fill each class's remaining targets in random order.
    """
    labels = pd.Series(labels, dtype="string").reset_index(drop=True)
    if labels.isna().any():
        raise ValueError("assign_splits needs a label for every image")
    ratios = np.asarray(validate_ratios(ratios), dtype=float)
    n = len(labels)
    units = unit_codes(groups if groups is not None else [None] * n)
    fixed = unify_groups(previous if previous is not None else [None] * n,
                         pd.Series(units, dtype="Int64"))
    classes, class_index = np.unique(labels.to_numpy(dtype=str), return_inverse=True)
    targets = target_counts(np.bincount(class_index, minlength=len(classes)), ratios, seed)
    split_of = np.array([SPLITS.index(s) if s is not None else -1 for s in fixed], dtype=np.int64)
    counts = np.zeros_like(targets)
    np.add.at(counts, (class_index[split_of >= 0], split_of[split_of >= 0]), 1)
    placer = _Placer(targets, counts, allowed=ratios > 0)
    rng = np.random.default_rng(seed)
    free = np.flatnonzero(split_of < 0)
    free = free[np.argsort(units[free], kind="stable")]
    members = np.split(free, np.flatnonzero(np.diff(units[free])) + 1) if len(free) else []
    sizes = np.array([len(rows) for rows in members], dtype=np.int64)
    multi = np.flatnonzero(sizes > 1)
    multi = multi[rng.permutation(len(multi))]
    for unit in multi[np.argsort(-sizes[multi], kind="stable")]:
        rows = members[unit]
        split_of[rows] = placer.place(Counter(class_index[rows].tolist()))
    singles = np.array([members[u][0] for u in np.flatnonzero(sizes == 1)], dtype=np.int64)
    for row in singles[rng.permutation(len(singles))].tolist():
        split_of[row] = placer.place({int(class_index[row]): 1})
    return np.array(SPLITS, dtype=object)[split_of]


class _Placer:
    """Running per-class counts; puts each unit where it overshoots its targets least."""

    def __init__(self, targets: np.ndarray, counts: np.ndarray, allowed: np.ndarray):
        self.targets, self.counts = targets, counts
        self.overall, self.totals = targets.sum(axis=0), counts.sum(axis=0)
        self.splits = [s for s in range(len(SPLITS)) if allowed[s]]

    def place(self, composition: dict[int, int]) -> int:
        """The chosen split for a unit holding composition[class] images; counts are updated."""
        def cost(s: int) -> tuple:
            squared = sum(k * (2 * (self.counts[c, s] - self.targets[c, s]) + k)
                          for c, k in composition.items())
            return squared, self.totals[s] - self.overall[s], s
        best = min(self.splits, key=cost)
        for c, k in composition.items():
            self.counts[c, best] += k
            self.totals[best] += k
        return best


def effective_labels(frame: pd.DataFrame) -> pd.Series:
    """The label a split uses: the reviewer's `review_label` where they relabelled, else `label`."""
    labels = frame["label"].astype("string")
    if {"review_decision", "review_label"} <= set(frame.columns):
        relabel = (frame["review_decision"] == "relabel").fillna(False) & frame["review_label"].notna()
        labels = labels.mask(relabel, frame["review_label"].astype("string"))
    return labels


def exclusion_reasons(frame: pd.DataFrame, groups, keepers=None, *, exclude=EXCLUDE_RULES,
                      keep_duplicates: bool = False) -> pd.Series:
    """Why each image is left out of every split (null when it is used); the first rule that applies.

    frame holds `split_label`, `readable`, optionally `review_decision`, `noise_flag`, `width`,
    `height`, `bytes`, `path`. Rules: unreadable, unlabelled (always), dropped (reviewed drop), noise
    (flagged and not reviewed keep/relabel), duplicate (every member of a group but one, unless
    keep_duplicates: the keeper, or when it is excluded, the next by the keeper rule).
    """
    unknown = set(exclude) - set(EXCLUDE_RULES)
    if unknown:
        raise ConfigError(f"unknown exclude rule(s) {sorted(unknown)} (known: {', '.join(EXCLUDE_RULES)})")
    n = len(frame)
    decision = _column(frame, "review_decision", pd.NA).astype("string")
    rules = {
        "unreadable": ~_column(frame, "readable", True).astype("boolean").fillna(False).to_numpy(bool),
        "unlabelled": frame["split_label"].isna().to_numpy(bool),
        "dropped": (decision == "drop").fillna(False).to_numpy(bool),
        "noise": (_column(frame, "noise_flag", False).astype("boolean").fillna(False)
                  & ~decision.isin(["keep", "relabel"]).fillna(False)).to_numpy(bool),
    }
    reasons = pd.Series(pd.NA, index=range(n), dtype="string")
    for name, hit in rules.items():
        if name == "unlabelled" or name in exclude:
            reasons[hit & reasons.isna().to_numpy()] = name
    if not keep_duplicates:
        reasons[_non_representatives(frame, groups, keepers, reasons.isna().to_numpy())] = "duplicate"
    return reasons


def _column(frame: pd.DataFrame, name: str, default) -> pd.Series:
    return frame[name].reset_index(drop=True) if name in frame.columns else pd.Series([default] * len(frame))


def _non_representatives(frame, groups, keepers, used: np.ndarray) -> np.ndarray:
    """Used members of a duplicate group other than the one that represents it: dedupe's keeper,
    else the first by the keeper rule (curation/vocabulary.py)."""
    ranked = keeper_keys(frame.reset_index(drop=True))
    ranked["group"] = pd.Series(groups, dtype="Int64").to_numpy()
    ranked["keeper"] = pd.Series(keepers if keepers is not None else [False] * len(frame),
                                 dtype="boolean").fillna(False).to_numpy(bool)
    ranked = ranked[used & ranked["group"].notna().to_numpy()]
    ranked = ranked.sort_values(["group", "keeper", *KEEPER_KEYS],
                                ascending=[True, False, *KEEPER_ASCENDING], kind="stable")
    others = ranked.index[ranked.duplicated("group", keep="first")]
    mask = np.zeros(len(frame), dtype=bool)
    mask[others] = True
    return mask


# ---- the step: read the manifest, apply the policy, assign, write -----------------------------

def _rules(value) -> tuple[str, ...]:
    """--exclude values: 'none' means no rule."""
    return tuple(rule for rule in ((value,) if isinstance(value, str) else value) if rule != "none")


@dataclass(frozen=True)
class Settings:
    """What `curate split` can be told."""

    ratios: tuple[float, float, float] | None = setting(
        None, "train,val,test fractions, e.g. 0.6,0.2,0.2 [default: datasets.yaml].",
        check=validate_ratios, config="ratios", kind=str)
    seed: int = setting(0, "Random seed; same seed, same split.")
    keep_duplicates: bool = setting(False, "Keep every member of a duplicate group, in its "
                                    "keeper's split (default: only one per group).")
    exclude: tuple[str, ...] = setting(
        EXCLUDE_RULES, "Exclusion rules (repeat the option; 'none' for no rule): unreadable "
        "files, noise flagged by flag-noise (unless reviewed keep/relabel), reviewed drops. "
        "Unlabelled images are always excluded.", choices=(*EXCLUDE_RULES, "none"), many=True,
        check=_rules)
    respect_given: bool = setting(False, "Keep the folders' train/validation/test split and "
                                  "report duplicate groups that cross it.")
    fix_leaks: bool = setting(False, "With --respect-given: move each crossing group whole into "
                              "the first of train, val, test it touches.")
    reshuffle: bool = setting(False, "Re-split every image (default: images that already have a "
                              "split keep it; only new ones are placed).", result=False)
    materialize: Path | None = setting(None, "Also lay out DIR/{train,val,test}/<class>/ as links "
                                       "to the images.", path="dir", result=False)
    link: str = setting("auto", "How --materialize makes files (auto: hard link, else symlink, "
                        "else copy).", choices=LINK_MODES, result=False)

    def __post_init__(self):
        if self.fix_leaks and not self.respect_given:
            raise SettingError("split: option --fix-leaks goes with --respect-given: a fresh "
                               "split is leak-free by construction")


def run(work: Workdir, settings: Settings) -> dict:
    """Assign train/val/test/excluded to every image of the manifest and return the summary."""
    from curation.split import materialize as layout

    target = layout.check_target(settings.materialize, work.root) if settings.materialize else None
    manifest = work.read()
    frame = manifest.reset_index(drop=True).copy()
    groups, keepers, group_source = duplicate_groups(frame)
    frame["split_label"] = effective_labels(frame)
    frame["split_excluded_by"] = exclusion_reasons(frame, groups, keepers, exclude=settings.exclude,
                                                   keep_duplicates=settings.keep_duplicates)
    own = _starting_splits(frame, work.last(), settings)
    used = frame["split_excluded_by"].isna().to_numpy()
    start = unify_groups(own, groups)
    assigned = assign_splits(frame["split_label"][used], groups[used], settings.ratios,
                             settings.seed, start[used])
    if settings.respect_given and not settings.fix_leaks:
        assigned = np.where(own[used].notna(), own[used].to_numpy(object), assigned)
    frame["split"] = EXCLUDED
    frame.loc[used, "split"] = assigned
    summary = summarize(frame, groups, ratios=settings.ratios, own=own, group_source=group_source)
    summary.update(seed=settings.seed, respect_given=settings.respect_given,
                   fix_leaks=settings.fix_leaks)
    work.merge(manifest, frame[["path", *SPLIT_OUTPUT_COLUMNS]].astype("string"))
    work.write_csv("splits.csv", _splits_table(frame, groups))
    if target is not None:
        summary["materialized"] = layout.materialize(
            frame[frame["split"] != EXCLUDED], work.root, target, link=settings.link,
            quiet=work.quiet)
    summary["seconds"] = round(time.time() - work.started, 2)
    return summary


def split(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate split` as a function: see Settings for the keyword arguments."""
    return run_step(STEP, config, workdir, quiet=quiet, **settings)


def duplicate_groups(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series, str]:
    """(group ids, keeper flags, where they came from): dedupe's columns, else identical bytes."""
    groups, from_dedupe = manifest_groups(frame)
    if from_dedupe:
        keepers = _column(frame, "dup_keeper", False).astype("boolean").fillna(False)
        return groups, keepers, "dedupe"
    first = ~pd.DataFrame({"g": groups, "p": frame["path"]}).sort_values("p").duplicated("g")
    keepers = (first.sort_index() & groups.notna()).astype("boolean")
    return groups, keepers, "sha256 (run `curate dedupe` to group near-duplicates too)"


def _starting_splits(frame: pd.DataFrame, last: dict, settings: Settings) -> pd.Series:
    """Splits to keep: the folders' given splits, or the previous run's unless reshuffled."""
    if settings.respect_given:
        given = _column(frame, "given_split", pd.NA).astype("string").map(GIVEN_TO_SPLIT)
        if given.isna().all():
            raise ConfigError("--respect-given: this dataset has no given split folders "
                              "(train/validation/test); drop the option for a fresh split")
        return given.astype("string")
    previous = _column(frame, "split", pd.NA).astype("string")
    if settings.reshuffle or previous.isin(SPLITS).sum() == 0:
        return pd.Series(pd.NA, index=range(len(frame)), dtype="string")
    now = record_of(settings)
    for key in ("ratios", "seed", "respect_given"):
        if key in last and last[key] != now[key]:
            raise ConfigError(f"the existing split was made with {key}={last[key]}, now {key}="
                              f"{now[key]}; existing images keep their split unless you pass "
                              f"--reshuffle to re-split everything")
    return previous.where(previous.isin(SPLITS)).astype("string")


def _splits_table(frame: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """splits.csv: path, the label used, split, duplicate group and exclusion reason per image."""
    return pd.DataFrame({"path": frame["path"], "label": frame["split_label"], "split": frame["split"],
                         "dup_group": groups, "excluded_by": frame["split_excluded_by"]})


def summarize(frame: pd.DataFrame, groups: pd.Series, *, ratios, own: pd.Series,
              group_source: str) -> dict:
    """Counts a user checks after a split: per class × split, exclusions per rule, stability, leaks."""
    split = frame["split"]
    used = (split != EXCLUDED).to_numpy()
    table = pd.crosstab(frame["split_label"].fillna("(no label)"), split)
    table = table.reindex(columns=[*SPLITS, EXCLUDED], fill_value=0)
    sizes = table[list(SPLITS)].sum(axis=1).to_numpy()[:, None]
    deviation = np.abs(table[list(SPLITS)].to_numpy() - sizes * np.asarray(ratios))
    wanted = [s for s, r in zip(SPLITS, ratios) if r > 0]
    empty = {label: [s for s in wanted if row[s] == 0] for label, row in table.iterrows()
             if label != "(no label)" and sum(row[s] for s in SPLITS) and (row[wanted] == 0).any()}
    had = own.notna().to_numpy() & used
    same = (own.fillna("") == split.fillna("")).to_numpy(bool)
    reasons = frame["split_excluded_by"].value_counts()
    given = "given_split" in frame.columns and frame["given_split"].notna().any()
    return {
        "images": int(len(frame)), "used": int(used.sum()),
        "splits": {s: int((split == s).sum()) for s in (*SPLITS, EXCLUDED)},
        "ratios": list(ratios),
        "excluded_by": {r: int(reasons.get(r, 0)) for r in REASONS},
        "classes": {label: {s: int(n) for s, n in row.items()} for label, row in table.iterrows()},
        "max_deviation": round(float(deviation.max()), 3) if deviation.size else 0.0,
        "empty_splits": empty,
        "kept": int((had & same).sum()), "moved": int((had & ~same).sum()),
        "new": int((used & ~had).sum()),
        "groups": {"source": group_source, "groups": int(groups.nunique()),
                   "images": int(groups.notna().sum())},
        "leaks": leak_report(frame, "split", groups=groups, max_listed=50),
        "given_leaks": leak_report(frame, "given_split", groups=groups, max_listed=50) if given else None,
    }


def describe(summary: dict) -> str:
    """The summary as text: totals, the class × split table, exclusions, stability and leaks."""
    splits = summary["splits"]
    ratios = "/".join(f"{r:g}" for r in summary["ratios"])
    mode = "given folders kept" if summary["respect_given"] else f"seed {summary['seed']}"
    lines = [f"Split {summary['used']} of {summary['images']} images ({mode}, ratios {ratios}): "
             + ", ".join(f"{s} {splits[s]}" for s in SPLITS) + f"; {splits[EXCLUDED]} excluded."]
    reasons = [f"{r} {n}" for r, n in summary["excluded_by"].items() if n]
    if reasons:
        lines.append("Excluded: " + ", ".join(reasons) + ".")
    width = max([len("class"), len("total"), *(len(c) for c in summary["classes"])])
    header = f"  {'class':<{width}}" + "".join(f"{s:>10}" for s in (*SPLITS, EXCLUDED))
    lines.append(header)
    for label, counts in summary["classes"].items():
        lines.append(f"  {label:<{width}}" + "".join(f"{counts[s]:>10}" for s in (*SPLITS, EXCLUDED)))
    lines.append(f"  {'total':<{width}}" + "".join(f"{splits[s]:>10}" for s in (*SPLITS, EXCLUDED)))
    lines.append(f"Largest gap between a class's count and ratio × class size: "
                 f"{summary['max_deviation']:g} images.")
    for label, missing in summary["empty_splits"].items():
        lines.append(f"Warning: class {label} has no image in {', '.join(missing)} (too few images).")
    lines.append(f"Kept {summary['kept']} earlier assignments, placed {summary['new']} images"
                 + (f", moved {summary['moved']} to keep duplicate groups whole." if summary["moved"]
                    else "."))
    groups = summary["groups"]
    lines.append(f"Duplicate groups from {groups['source']}: {groups['groups']} groups, "
                 f"{groups['images']} images.")
    if summary["given_leaks"] is not None:
        lines.append("Given folders: " + describe_leaks(summary["given_leaks"], show=5))
    lines.append(describe_leaks(summary["leaks"], show=10))
    if "materialized" in summary:
        from curation.split.materialize import describe as describe_layout
        lines.append(describe_layout(summary["materialized"]))
    return "\n".join(lines)


HELP = """Assign train/val/test (or excluded) to every image: stratified, leak-free, stable.

\b
Example: curate split stanford-cars-25 --ratios 0.7,0.15,0.15 --seed 1
         curate split swift-wagonr --respect-given --fix-leaks
         curate split indian-cars-7 --materialize ~/cars-split
Writes the manifest's split, split_label and split_excluded_by columns and
<workdir>/splits.csv. A duplicate group always lands in one split.
"""


STEP = Step("split", Settings, run, describe, help=HELP,
            needs=("path", "label", "readable"),
            uses=("given_split", "width", "height", "bytes", "sha256", "dup_group", "dup_keeper",
                  "noise_flag", "review_decision", "review_label"),
            adds=tuple(SPLIT_OUTPUT_COLUMNS), outputs=("splits.csv",),
            on_change={"reshuffle": True})
