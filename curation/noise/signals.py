"""Noise signals from image embeddings, as pure functions over arrays (no disk, no Keras).

Three signals, each on its own scale and each mapped so that 0.5 is its automatic cut:
- non-car: how far an image lies from the bulk of the dataset (distance to a trimmed centre
  plus mean distance to its nearest neighbours, as robust z-scores);
- per-class outlier: how far an image lies from the rest of its own class (robust z-score);
- mislabel: out-of-fold class probabilities from K-fold cross-validated linear heads
  (shrinkage LDA, temperature-calibrated), then confident learning (cleanlab) estimates how
  many labels are wrong; that many images with the strongest evidence against their given
  label are flagged.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from curation.vocabulary import centre_distance, unit_rows

REASONS = ("non_car", "mislabel", "outlier")
SIGNAL_COLUMNS = ["noise_ood", "noise_outlier", "noise_mislabel", "noise_given_prob"]


@dataclass(frozen=True)
class NoiseParams:
    """Detector settings; the defaults are the ones measured by bench/noise_bench.py."""

    folds: int = 5
    repeats: int = 3             # K-fold splits averaged for the out-of-fold probabilities
    seed: int = 0
    neighbors: int = 10          # k of the kNN distance in the non-car score
    ood_cut: float = 4.5         # robust z of the non-car score that maps to 0.5
    outlier_cut: float = 4.0     # robust z within a class that maps to 0.5
    min_class_size: int = 3      # smaller classes are not judged for mislabels
    trim: float = 0.8            # fraction kept when estimating a robust centre


@dataclass
class Signals:
    """Per-unit signals (one unit = one image, or one duplicate group with one label)."""

    table: pd.DataFrame          # SIGNAL_COLUMNS + pred_label (int, -1 when not judged)
    info: dict = field(default_factory=dict)


def unit_vectors(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (cosine geometry)."""
    return unit_rows(embeddings, np.float32)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (normal-scaled MAD): a z-score that the outliers themselves cannot inflate."""
    from scipy.stats import median_abs_deviation

    mad = median_abs_deviation(values, scale="normal")
    return (values - np.median(values)) / max(mad, 1e-9)


def robust_centre(vectors: np.ndarray, *, trim: float = 0.8, rounds: int = 5) -> np.ndarray:
    """Unit mean direction of the `trim` fraction of vectors closest to it, refined a few rounds."""
    keep = np.ones(len(vectors), dtype=bool)
    centre = vectors.mean(axis=0)
    for _ in range(rounds):
        centre = vectors[keep].mean(axis=0)
        centre /= max(np.linalg.norm(centre), 1e-12)
        distance = 1.0 - vectors @ centre
        keep = distance <= np.quantile(distance, trim)
    return centre


def knn_distance(vectors: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each unit vector to its k nearest other vectors (exact search;
    scikit-learn leaves each vector out of its own neighbours, ties with copies included)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(vectors) - 1)
    if k < 1:
        return np.zeros(len(vectors), dtype=np.float32)
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(vectors)
    distance, _ = search.kneighbors()
    return distance.mean(axis=1)


def ood_scores(vectors: np.ndarray, *, neighbors: int = 10, trim: float = 0.8) -> np.ndarray:
    """Non-car score: mean robust z of distance to the trimmed centre and of kNN distance.

    The same distance rule as predict's guard (vocabulary.centre_distance), judged differently:
    here the photos to judge are the population itself, their labels untrusted and no model
    trained, so the centre is robust to the outliers and the cut is a robust z; predict measures
    a new photo against clean training-class means with a cut taken from the val split.
    """
    centre = robust_centre(vectors, trim=trim)
    spread = robust_z(centre_distance(vectors, centre))
    return (spread + robust_z(knn_distance(vectors, neighbors))) / 2


def outlier_scores(vectors: np.ndarray, labels: np.ndarray, *, min_size: int = 5,
                   trim: float = 0.8) -> np.ndarray:
    """Robust z of each image's distance to its own class's trimmed centre; NaN when not judged."""
    scores = np.full(len(vectors), np.nan)
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        if len(members) >= min_size:
            centre = robust_centre(vectors[members], trim=trim)
            scores[members] = robust_z(centre_distance(vectors[members], centre))
    return scores


def probe_features(embeddings: np.ndarray) -> np.ndarray:
    """Signed square root (power normalisation): tames bursty pooled activations for a linear head."""
    x = np.asarray(embeddings, dtype=np.float64)
    return np.sign(x) * np.sqrt(np.abs(x))


def lda_head(features: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 0.6):
    """Fit a shrinkage LDA head: pooled within-class covariance shrunk towards its mean variance.

    Closed form, so it is fast and deterministic; returns a function: features -> class scores.
    Classes absent from `labels` score -inf.
    """
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.covariance import empirical_covariance, shrunk_covariance

    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = (features - mean) / scale
    present = np.unique(labels)
    centres = np.stack([x[labels == k].mean(axis=0) for k in present])
    within = x - centres[np.searchsorted(present, labels)]
    covariance = shrunk_covariance(empirical_covariance(within, assume_centered=True), shrinkage)
    coef = cho_solve(cho_factor(covariance), centres.T).T
    prior = np.log(np.bincount(labels, minlength=n_classes)[present] / len(labels))
    intercept = -0.5 * np.einsum("kd,kd->k", centres, coef) + prior

    def scores(new: np.ndarray) -> np.ndarray:
        out = np.full((len(new), n_classes), -np.inf)
        out[:, present] = ((new - mean) / scale) @ coef.T + intercept
        return out

    return scores


def cross_val_logits(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                     folds: int, seed: int, n_classes: int, repeats: int = 1) -> np.ndarray:
    """Out-of-fold class scores from linear heads, averaged over `repeats` different K-fold
    splits (less split-to-split variance); duplicate groups never straddle folds.

    BLAS runs single-threaded here: these solves are small, and threads waiting on busy cores
    made them ~9x slower on a shared 2-core machine.
    """
    from sklearn.model_selection import StratifiedGroupKFold
    from threadpoolctl import threadpool_limits

    logits = np.zeros((len(labels), n_classes))
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # classes smaller than `folds` are fine: their images land in different test folds
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for repeat in range(repeats):
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True,
                                            random_state=seed * 1009 + repeat)
            for train, test in splitter.split(features, labels, groups):
                head = lda_head(features[train], labels[train], n_classes)
                logits[test] += head(features[test])
    return logits / repeats


def temperature_scale(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Softmax probabilities after one temperature fitted by NLL on the given labels.

    Calibrates probabilities (cleanlab needs them), unlike training.predict.calibrate, which
    sets the guard's two thresholds from val quantiles of a trained model's outputs.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    rows = np.arange(len(labels))
    finite = np.where(np.isfinite(logits), logits, -1e9)

    def nll(log_t: float) -> float:
        return -log_softmax(finite / np.exp(log_t), axis=1)[rows, labels].mean()

    temperature = float(np.exp(minimize_scalar(nll, bounds=(-4, 6), method="bounded").x))
    return np.exp(log_softmax(finite / temperature, axis=1)), temperature


def mislabel_scores(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, int]:
    """Score in [0, 1] (0.5 at the cut) and cleanlab's estimated number of label issues.

    Ranks by the evidence against the given label, log(best other class prob / given prob);
    the cut sits between the n-th and (n+1)-th strongest, n from confident learning's count of
    off-diagonal examples (cleanlab.count.num_label_issues).
    """
    from cleanlab.count import num_label_issues

    rows = np.arange(len(labels))
    others = probs.copy()
    others[rows, labels] = 0.0
    evidence = np.log(others.max(axis=1) + 1e-12) - np.log(probs[rows, labels] + 1e-12)
    issues = int(num_label_issues(labels, probs))
    ordered = np.sort(evidence)[::-1]
    if issues == 0:
        cut = ordered[0] + 1.0
    elif issues >= len(ordered):
        cut = ordered[-1] - 1.0
    else:
        cut = (ordered[issues - 1] + ordered[issues]) / 2
    return _sigmoid(evidence - cut), issues


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def noise_signals(embeddings: np.ndarray, labels: np.ndarray, *, groups: np.ndarray | None = None,
                  params: NoiseParams = NoiseParams()) -> Signals:
    """All signals for n units.

    embeddings: (n, d) pooled backbone features; labels: (n,) int class ids, -1 when unlabelled;
    groups: (n,) ids that must share a fold (duplicate groups), default one per unit.
    Returns noise_ood / noise_outlier (robust z), noise_mislabel (0..1, 0.5 at the cut),
    noise_given_prob (calibrated out-of-fold probability of the given label), pred_label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    vectors = unit_vectors(embeddings)
    ood = ood_scores(vectors, neighbors=params.neighbors, trim=params.trim)
    table = pd.DataFrame({"noise_ood": ood,
                          "noise_outlier": outlier_scores(vectors, labels, trim=params.trim),
                          "noise_mislabel": np.nan, "noise_given_prob": np.nan,
                          "pred_label": np.full(n, -1, dtype=np.int64)})
    info = {"units": n, "non_car_estimate": int((ood >= params.ood_cut).sum())}
    counts = pd.Series(labels[labels >= 0]).value_counts()
    judged_classes = np.sort(counts[counts >= params.min_class_size].index.to_numpy())
    judged = np.isin(labels, judged_classes) & (ood < params.ood_cut)
    largest = int(counts[judged_classes].max()) if len(judged_classes) else 0
    folds = min(params.folds, largest)   # scikit-learn needs one class with `folds` images
    if len(judged_classes) < 2 or folds < 2:
        info["mislabel"] = "skipped: needs at least two classes with " \
                           f"{params.min_class_size}+ images"
        return Signals(table, info)
    dense = np.searchsorted(judged_classes, labels[judged])
    logits = cross_val_logits(probe_features(embeddings)[judged], dense, groups[judged],
                              folds=folds, seed=params.seed, n_classes=len(judged_classes),
                              repeats=params.repeats)
    probs, temperature = temperature_scale(logits, dense)
    scores, issues = mislabel_scores(dense, probs)
    where = np.flatnonzero(judged)
    table.loc[where, "noise_mislabel"] = scores
    table.loc[where, "noise_given_prob"] = probs[np.arange(len(dense)), dense]
    table.loc[where, "pred_label"] = judged_classes[probs.argmax(axis=1)]
    info.update(mislabel_estimate=issues, judged_for_mislabel=int(judged.sum()),
                folds=folds, temperature=round(temperature, 3),
                probe_agreement=round(float((probs.argmax(axis=1) == dense).mean()), 4))
    return Signals(table, info)


def decide(signals: pd.DataFrame, *, params: NoiseParams = NoiseParams(),
           threshold: float | None = None, max_flag_rate: float | None = None) -> pd.DataFrame:
    """noise_score (max of the three signals mapped to 0..1), noise_flag and noise_reason.

    Each signal maps to 0.5 at its automatic cut, so the default threshold 0.5 reproduces the
    automatic decisions; `threshold` moves all three together. Reason priority: non_car, then
    mislabel, then outlier. `max_flag_rate` keeps only the top fraction of rows by score.
    """
    threshold = 0.5 if threshold is None else threshold
    mapped = pd.DataFrame({
        "non_car": _sigmoid(signals["noise_ood"].to_numpy(float) - params.ood_cut),
        "mislabel": signals["noise_mislabel"].to_numpy(float),
        "outlier": _sigmoid(signals["noise_outlier"].to_numpy(float) - params.outlier_cut),
    }, index=signals.index)
    score = mapped.max(axis=1, skipna=True).fillna(0.0)
    reason = pd.Series(pd.NA, index=signals.index, dtype="string")
    for name in reversed(REASONS):
        reason = reason.mask(mapped[name].fillna(0.0) >= threshold, name)
    if max_flag_rate is not None:
        allowed = int(np.floor(max_flag_rate * len(score)))
        rank = score.rank(method="first", ascending=False)
        reason = reason.mask(rank > allowed, pd.NA)
    return pd.DataFrame({"noise_score": score.round(6), "noise_flag": reason.notna(),
                         "noise_reason": reason}, index=signals.index)
