"""The pure noise core on synthetic embeddings: non-car, mislabels, outliers, thresholds, seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.noise.signals import (NoiseParams, decide, knn_distance, lda_head, mislabel_scores,
                                    noise_signals, robust_z, unit_vectors)

CLASSES, PER_CLASS, DIMS = 5, 40, 48


def car_like(seed: int = 0):
    """Non-negative 'pooled features': a shared car direction, one offset per class, noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.0, 2.0, DIMS)
    offsets = rng.uniform(0, 1.2, (CLASSES, DIMS)) * (rng.random((CLASSES, DIMS)) < 0.3)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    x = base + offsets[labels] + rng.normal(0, 0.15, (len(labels), DIMS))
    return np.clip(x, 0, None), labels


def far_points(count: int, seed: int = 1) -> np.ndarray:
    """Sparse activations in other directions: what non-car photos look like to a car backbone."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 4, (count, DIMS)) * (rng.random((count, DIMS)) < 0.2)


def swap(labels: np.ndarray, indices, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    for i in indices:
        noisy[i] = rng.choice([c for c in range(CLASSES) if c != labels[i]])
    return noisy


def run(x, labels, **params):
    signals = noise_signals(x, labels, params=NoiseParams(**params))
    return signals, decide(signals.table, params=NoiseParams(**params))


def test_planted_far_points_are_flagged_non_car():
    x, labels = car_like()
    far = far_points(8)
    signals, flags = run(np.vstack([x, far]), np.concatenate([labels, np.arange(8) % CLASSES]))
    reasons = flags["noise_reason"].fillna("-").to_numpy()
    assert (reasons[-8:] == "non_car").all()
    assert (reasons[:-8] == "non_car").sum() == 0
    assert signals.info["non_car_estimate"] == 8
    assert flags["noise_score"].iloc[-8:].min() > flags["noise_score"].iloc[:-8].median()


def test_swapped_labels_are_flagged_mislabel_with_the_true_class_suggested():
    x, labels = car_like()
    swapped = [3, 47, 90, 130, 170, 199]
    signals, flags = run(x, swap(labels, swapped))
    mislabel = flags.index[flags["noise_reason"] == "mislabel"]
    assert set(swapped) <= set(mislabel)
    assert len(set(mislabel) - set(swapped)) <= 2
    assert (signals.table.loc[swapped, "pred_label"].to_numpy() == labels[swapped]).all()
    assert (signals.table.loc[swapped, "noise_given_prob"] < 0.2).all()


def test_clean_data_is_mostly_left_alone():
    x, labels = car_like(seed=3)
    _, flags = run(x, labels)
    assert flags["noise_flag"].mean() <= 0.03


def test_same_seed_same_flags_and_other_seed_still_finds_the_noise():
    x, labels = car_like(seed=4)
    noisy = swap(labels, [5, 55, 105])
    first, second = run(x, noisy, seed=7)[1], run(x, noisy, seed=7)[1]
    pd.testing.assert_frame_equal(first, second)
    other = run(x, noisy, seed=8)[1]
    assert {5, 55, 105} <= set(other.index[other["noise_reason"] == "mislabel"])


def test_unlabelled_and_tiny_classes_get_no_mislabel_judgement():
    x, labels = car_like()
    labels = labels.copy()
    labels[:3] = -1
    labels[-2:] = CLASSES            # a class of two images
    signals, _ = run(x, labels)
    table = signals.table
    assert table.loc[:2, "noise_mislabel"].isna().all()
    assert table.iloc[-2:]["noise_mislabel"].isna().all()
    assert table.loc[:2, "noise_outlier"].isna().all()
    assert table["noise_ood"].notna().all()


def test_one_class_skips_mislabels_but_still_finds_non_car():
    x, _ = car_like()
    data = np.vstack([x, far_points(4)])
    signals, flags = run(data, np.zeros(len(data), dtype=int))
    assert "skipped" in signals.info["mislabel"]
    assert (flags["noise_reason"].iloc[-4:] == "non_car").all()


def test_decide_threshold_priority_and_cap():
    signals = pd.DataFrame({"noise_ood": [9.0, 0.0, 0.0, 0.0, 9.0],
                            "noise_outlier": [0.0, 9.0, 0.0, 0.0, np.nan],
                            "noise_mislabel": [0.9, 0.3, 0.7, 0.1, np.nan],
                            "noise_given_prob": [0.0] * 5})
    auto = decide(signals)
    assert list(auto["noise_reason"].fillna("-")) == ["non_car", "outlier", "mislabel", "-",
                                                      "non_car"]
    assert auto["noise_flag"].tolist() == [True, True, True, False, True]
    strict = decide(signals, threshold=0.95)
    assert strict["noise_flag"].tolist() == [True, True, False, False, True]
    capped = decide(signals, max_flag_rate=0.4)
    assert capped["noise_flag"].sum() == 2
    assert (capped["noise_score"] >= 0).all() and (capped["noise_score"] <= 1).all()


def test_mislabel_cut_follows_the_estimated_count():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    probs = np.full((200, 4), 0.02)
    probs[np.arange(200), labels] = 0.94
    wrong = rng.choice(200, 10, replace=False)
    probs[wrong] = 0.02
    probs[wrong, (labels[wrong] + 1) % 4] = 0.94
    scores, issues = mislabel_scores(labels, probs)
    assert issues == 10
    assert set(np.flatnonzero(scores > 0.5)) == set(wrong)


def test_robust_z_ignores_the_outliers_it_scores():
    bulk = np.random.default_rng(0).normal(0, 1, 500)
    with_outliers = np.concatenate([bulk, np.full(50, 40.0)])
    z = robust_z(with_outliers)
    assert z[-1] > 20
    assert abs(np.median(z[:500])) < 0.3


def test_knn_distance_excludes_self():
    v = unit_vectors(np.array([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]]))
    d = knn_distance(v, 1)
    assert d.max() < 1e-3
    assert knn_distance(v[:1], 5).tolist() == [0.0]


@pytest.mark.parametrize("shrinkage", [0.1, 0.6, 0.95])
def test_lda_head_separates_classes_and_scores_missing_ones_minus_inf(shrinkage):
    x, labels = car_like()
    keep = labels != 4
    scores = lda_head(x[keep], labels[keep], CLASSES, shrinkage)(x)
    assert np.isneginf(scores[:, 4]).all()
    assert (scores[keep].argmax(axis=1) == labels[keep]).mean() > 0.95
