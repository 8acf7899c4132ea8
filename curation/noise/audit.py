"""Audit the detector on a user's own data: plant known noise in memory, run it, score it.

Planting happens on arrays (labels and embeddings), never on files: a share of images get a
wrong class and, when outside photos are given, those join under random class labels. Shared
by `curate flag-noise --audit` and bench/noise_bench.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from curation.noise.signals import NoiseParams, decide, noise_signals

KINDS = ("non_car", "mislabel")


def plant_mislabels(labels: np.ndarray, rate: float, rng: np.random.Generator,
                    *, eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move round(rate * eligible) labels to a different eligible class; (new labels, planted mask)."""
    labels = np.asarray(labels).copy()
    eligible = labels >= 0 if eligible is None else eligible & (labels >= 0)
    classes = np.unique(labels[eligible])
    planted = np.zeros(len(labels), dtype=bool)
    if len(classes) < 2:
        return labels, planted
    chosen = rng.choice(np.flatnonzero(eligible), int(round(rate * eligible.sum())), replace=False)
    for i in chosen:
        labels[i] = rng.choice(classes[classes != labels[i]])
    planted[chosen] = True
    return labels, planted


def plant_view(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
               outside: np.ndarray | None, mislabel_rate: float, outside_rate: float,
               rng: np.random.Generator, min_class_size: int = 3):
    """The noisy view: (embeddings, labels, groups, truth) with truth in clean/mislabel/non_car."""
    counts = pd.Series(labels[labels >= 0]).value_counts()
    eligible = np.isin(labels, counts[counts >= min_class_size].index.to_numpy())
    noisy, planted = plant_mislabels(labels, mislabel_rate, rng, eligible=eligible)
    truth = np.where(planted, "mislabel", "clean").astype(object)
    if outside is None or len(outside) == 0 or not eligible.any():
        return embeddings, noisy, groups, truth
    take = min(len(outside), int(round(outside_rate * len(labels))))
    picked = outside[rng.choice(len(outside), take, replace=False)]
    outside_labels = rng.choice(np.unique(labels[eligible]), take)
    outside_groups = np.max(groups, initial=-1) + 1 + np.arange(take)
    return (np.concatenate([embeddings, picked]), np.concatenate([noisy, outside_labels]),
            np.concatenate([groups, outside_groups]),
            np.concatenate([truth, np.full(take, "non_car", dtype=object)]))


def detection_scores(truth: np.ndarray, decisions: pd.DataFrame) -> dict:
    """Precision, recall and F1 per planted kind (matched on reason), overall, and AUROC."""
    from sklearn.metrics import roc_auc_score

    reason = decisions["noise_reason"].fillna("").to_numpy(dtype=object)
    flagged = decisions["noise_flag"].to_numpy(dtype=bool)
    result = {kind: _prf(reason == kind, truth == kind) for kind in KINDS if (truth == kind).any()}
    noisy = truth != "clean"
    result["any"] = _prf(flagged, noisy)
    result["flagged_clean"] = int((flagged & ~noisy).sum())
    result["outlier_flags"] = int((reason == "outlier").sum())
    if noisy.any() and not noisy.all():
        result["auroc"] = round(float(roc_auc_score(noisy, decisions["noise_score"])), 4)
    return result


def _prf(predicted: np.ndarray, actual: np.ndarray) -> dict:
    hits = int((predicted & actual).sum())
    precision = hits / predicted.sum() if predicted.any() else 0.0
    recall = hits / actual.sum() if actual.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"planted": int(actual.sum()), "flagged": int(predicted.sum()),
            "precision": round(float(precision), 4), "recall": round(float(recall), 4),
            "f1": round(float(f1), 4)}


def audit(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, *,
          outside: np.ndarray | None = None, mislabel_rate: float = 0.05,
          outside_rate: float = 0.05, params: NoiseParams = NoiseParams(),
          threshold: float | None = None, max_flag_rate: float | None = None) -> dict:
    """Plant noise (seeded by params.seed), run the detector on the view, and score it.

    embeddings: (n, d) per unit; labels: (n,) class ids (-1 unlabelled); outside: (m, d)
    embeddings of non-car photos to plant. Labels that were already wrong count against
    precision, so on real data the precision is a lower bound.
    """
    rng = np.random.default_rng(params.seed)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    view, noisy, view_groups, truth = plant_view(
        np.asarray(embeddings), np.asarray(labels), groups, outside=outside,
        mislabel_rate=mislabel_rate, outside_rate=outside_rate, rng=rng,
        min_class_size=params.min_class_size)
    signals = noise_signals(view, noisy, groups=view_groups, params=params)
    decisions = decide(signals.table, params=params, threshold=threshold,
                       max_flag_rate=max_flag_rate)
    result = detection_scores(truth, decisions)
    mislabelled = (truth == "mislabel") & (decisions["noise_reason"] == "mislabel").fillna(False).to_numpy(bool)
    original = np.concatenate([labels, np.full(len(truth) - len(labels), -1)])
    if mislabelled.any():
        suggested = signals.table["pred_label"].to_numpy()[mislabelled]
        result["suggested_label_accuracy"] = round(float((suggested == original[mislabelled]).mean()), 4)
    result["settings"] = {"mislabel_rate": mislabel_rate, "outside_rate": outside_rate,
                          "units": int(len(truth)), "seed": params.seed}
    result["detector"] = signals.info
    return result
