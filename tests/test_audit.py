"""Audit: planting noise in memory and scoring the detector against what was planted."""
from __future__ import annotations

import numpy as np
import pandas as pd

from curation.noise.audit import audit, detection_scores, plant_mislabels, plant_view
from curation.noise.signals import NoiseParams
from tests.test_noise_signals import car_like, far_points


def test_plant_mislabels_moves_the_asked_share_to_other_classes():
    labels = np.repeat(np.arange(4), 25)
    labels[:5] = -1
    noisy, planted = plant_mislabels(labels, 0.1, np.random.default_rng(0))
    assert planted.sum() == round(0.1 * 95)
    assert (noisy[planted] != labels[planted]).all() and (noisy[planted] >= 0).all()
    assert (noisy[~planted] == labels[~planted]).all()
    assert not planted[:5].any()


def test_plant_view_adds_outside_photos_under_class_labels_without_touching_inputs():
    x, labels = car_like()
    before = labels.copy()
    view, noisy, groups, truth = plant_view(x, labels, np.arange(len(labels)), outside=far_points(30),
                                            mislabel_rate=0.05, outside_rate=0.05,
                                            rng=np.random.default_rng(1))
    assert (labels == before).all()
    assert len(view) == len(labels) + 10 and (truth[-10:] == "non_car").all()
    assert (truth == "mislabel").sum() == 10
    assert len(set(groups[-10:]) & set(groups[:-10])) == 0
    assert set(noisy[-10:]) <= set(labels)


def test_detection_scores_per_kind():
    truth = np.array(["clean", "clean", "mislabel", "mislabel", "non_car"], dtype=object)
    decisions = pd.DataFrame({"noise_reason": pd.array([pd.NA, "mislabel", "mislabel", pd.NA,
                                                        "non_car"], dtype="string"),
                              "noise_flag": [False, True, True, False, True],
                              "noise_score": [0.1, 0.6, 0.9, 0.4, 0.99]})
    result = detection_scores(truth, decisions)
    assert result["mislabel"] == {"planted": 2, "flagged": 2, "precision": 0.5, "recall": 0.5,
                                  "f1": 0.5}
    assert result["non_car"]["recall"] == 1.0 and result["non_car"]["precision"] == 1.0
    assert result["any"]["recall"] == 0.6667 and result["flagged_clean"] == 1
    assert result["auroc"] == 0.8333


def test_audit_catches_what_it_plants_on_separable_data():
    x, labels = car_like()
    result = audit(x, labels, outside=far_points(20), mislabel_rate=0.05, outside_rate=0.05,
                   params=NoiseParams(seed=3))
    assert result["non_car"]["planted"] == 10 and result["non_car"]["recall"] == 1.0
    assert result["mislabel"]["recall"] >= 0.9 and result["mislabel"]["precision"] >= 0.7
    assert result["suggested_label_accuracy"] >= 0.9
    assert result["settings"]["units"] == len(labels) + 10
