"""Training, evaluation and prediction: pure parts on tiny arrays, then a tiny real end-to-end run.

The end-to-end runs train on an easy generated two-class set (red boxes vs blue discs on textured
backgrounds) at 64 px and assert that the model learns, not only that it runs.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from curation.config import DatasetConfig, TrainingSettings
from curation.manifest import ManifestMissing, read_manifest, write_manifest
from curation.scan.step import scan
from training.data import class_weights, encode_labels, load_pixels, split_rows
from training.evaluate import guard_rates, misclassified_rows, score
from training.predict import (NOT_A_CAR, UNSURE, calibrate, ood_distance, tail_quantile, top_k,
                              verdicts)
from curation.errors import NotEnoughData
from curation.settings import SettingError
from curation.steps import resolve_settings
from training.steps import TRAIN
from training.train import select_rows

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("blue_disc", "red_box")


# ---- pure parts ----------------------------------------------------------------------------

def _manifest(**columns) -> pd.DataFrame:
    base = {"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
            "label": ["x", "x", "y", "y", None], "bytes": [1] * 5, "mtime": [1.0] * 5,
            "readable": [True, True, True, False, True],
            "split": ["train", "val", "train", "test", "train"]}
    base.update(columns)
    return pd.DataFrame(base)


def test_split_rows_prefers_split_label_and_drops_unusable_rows():
    manifest = _manifest(split_label=["x", "y", "y", "y", None],
                         split=["train", "val", "excluded", "test", "train"])
    rows = split_rows(manifest)
    assert rows["path"].tolist() == ["a.jpg", "b.jpg"]       # excluded, unreadable, unlabelled gone
    assert rows["label"].tolist() == ["x", "y"]              # b relabelled by split_label


def test_select_rows_needs_a_split_and_a_val_set():
    with pytest.raises(ManifestMissing, match="curate split"):
        select_rows(_manifest().drop(columns="split"))
    with pytest.raises(NotEnoughData, match="val split is empty"):
        select_rows(_manifest(split=["train", "train", "train", "test", "train"]))
    rows, classes, unknown = select_rows(_manifest(label=["x", "z", "y", "x", "y"],
                                                   readable=[True] * 5,
                                                   split=["train", "val", "train", "val", "test"]))
    assert classes == ["x", "y"] and unknown == 1 and "b.jpg" not in rows["path"].tolist()


def test_class_weights_balance_rare_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert encode_labels(["b", "q", "a"], ["a", "b"]).tolist() == [1, -1, 0]


def test_settings_overrides_are_checked_and_named():
    config = DatasetConfig(name="x", root=Path("."), training=TrainingSettings(dropout=0.3))
    settings = resolve_settings(TRAIN, config, {"epochs": 3, "dropout": None})
    assert settings.epochs == 3 and settings.dropout == 0.3          # None: datasets.yaml's
    with pytest.raises(SettingError, match=r"option --dropout \(setting 'dropout'\) must be below 1"):
        resolve_settings(TRAIN, config, {"dropout": 1.5})
    bad_yaml = DatasetConfig(name="x", root=Path("."), training=TrainingSettings(epochs=0))
    with pytest.raises(SettingError, match="--epochs"):                # checked wherever it comes from
        resolve_settings(TRAIN, bad_yaml, {})


def test_small_val_sets_get_a_distance_cut_off_near_the_true_tail():
    """42 val distances: the log-normal fit's 99th percentile lets about 1 % of fresh cars past,
    where the empirical one (the largest of 42) rejects several times that."""
    rng = np.random.default_rng(3)
    fresh = rng.lognormal(np.log(0.25), 0.25, 200_000)
    fitted, empirical = [], []
    for _ in range(200):
        val = rng.lognormal(np.log(0.25), 0.25, 42)
        fitted.append(np.mean(fresh > tail_quantile(val, 0.99)))
        empirical.append(np.mean(fresh > np.quantile(val, 0.99)))
    assert 0.005 < np.median(fitted) < 0.02
    assert np.median(empirical) > 1.5 * np.median(fitted)


def test_calibrated_guard_flags_far_and_unconfident_inputs():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:2] * 10
    train = np.concatenate([centres[k] + rng.normal(0, 1, (30, 4)) for k in (0, 1)])
    y = np.repeat([0, 1], 30)
    val = np.concatenate([centres[k] + rng.normal(0, 1, (10, 4)) for k in (0, 1)])
    val_probs = np.tile([[0.9, 0.1]], (20, 1))
    means, calibration = calibrate(train, y, val, val_probs, 2)
    far = np.array([[0, 0, 10.0, 0]])                          # a direction no class points to
    assert ood_distance(far, means)[0] > calibration["distance_threshold"]
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.9, 0.1]])
    distances = np.array([0.0, 0.0, 5.0])
    assert verdicts(probs, distances, ["p", "q"], calibration) == ["p", UNSURE, NOT_A_CAR]
    assert verdicts(probs[1:2], distances[1:2], ["p", "q"], calibration, min_confidence=0.5) == ["p"]
    assert top_k(probs[:1], ["p", "q"], 1) == [[{"label": "p", "probability": 0.95}]]


def test_score_and_guard_rates():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    metrics = score(np.array([0, 1, 1, 1]), probs, ["a", "b"])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert metrics["per_class"]["b"]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    rates = guard_rates(["a", NOT_A_CAR, "a", UNSURE], np.array([0, 1, 1, 1]), ["a", "b"])
    assert rates == {"not_a_car": 0.25, "unsure": 0.25, "accuracy_when_answered": 0.5}
    frame = pd.DataFrame({"path": ["p1", "p2"], "label": ["a", "b"], "predicted": ["a", "a"],
                          "confidence": [0.9, 0.7]})
    rows = misclassified_rows(frame, Path("/root"))
    assert [title for title, _ in rows] == ["true b: 1 wrong"]


# ---- pixel cache on real files ---------------------------------------------------------------

def test_pixel_cache_decodes_once_and_notices_changed_files(tmp_path, make_image):
    root = tmp_path / "data"
    paths = [make_image(root / f"{i}.jpg", seed=i) for i in range(3)]
    (root / "bad.jpg").write_bytes(b"not an image at all")

    def rows():
        names = [p.name for p in paths] + ["bad.jpg"]
        stats = [(root / n).stat() for n in names]
        return pd.DataFrame({"path": names, "bytes": [s.st_size for s in stats],
                             "mtime": [s.st_mtime for s in stats], "label": "x"})

    cache = tmp_path / "cache"
    pixels, located, failures = load_pixels(rows(), root, 32, cache, workers=1, quiet=True)
    assert located["path"].tolist() == ["0.jpg", "1.jpg", "2.jpg"]
    assert [path for path, _ in failures] == ["bad.jpg"] and pixels.shape[1:] == (32, 32, 3)
    first = np.array(pixels[located["slot"]])
    make_image(paths[1], seed=99)
    os.utime(paths[1], (1, 1))                                 # a different mtime: must re-decode
    pixels, located, _ = load_pixels(rows(), root, 32, cache, workers=1, quiet=True)
    again = np.array(pixels[located["slot"]])
    assert len(pixels) == 3                                    # old copy of 1.jpg replaced, not kept
    assert np.array_equal(first[[0, 2]], again[[0, 2]]) and not np.array_equal(first[1], again[1])


# ---- end to end on an easy generated set --------------------------------------------------------

def _easy_image(path: Path, label: str, seed: int) -> None:
    """A textured background with one big red box or blue disc at a random place."""
    rng = np.random.default_rng(seed)
    background = rng.normal(128, 30, (80, 80, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(5, 30, size=2))
    if label == "red_box":
        draw.rectangle([x, y, x + 45, y + 40], fill=(int(rng.integers(190, 255)), 20, 30))
    else:
        draw.ellipse([x, y, x + 45, y + 45], fill=(20, 40, int(rng.integers(190, 255))))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)


@pytest.fixture(scope="module")
def easy_set(tmp_path_factory):
    """Scanned and split two-class set (10 train, 4 val, 6 test images per class), to be learnt by
    the small MobileNet 0.25 with ImageNet weights (a random-init backbone gives no features)."""
    base = tmp_path_factory.mktemp("easy")
    root = base / "data"
    for c, label in enumerate(CLASSES):
        for i in range(20):
            _easy_image(root / label / f"{i:02d}.jpg", label, seed=1000 * c + i)
    config = DatasetConfig(name="easy", root=root, image_size=64, backbone="mobilenet_v1_025",
                           weights="imagenet",
                           training=TrainingSettings(epochs=8, fine_tune_epochs=1, batch_size=8,
                                                     learning_rate=0.01, fine_tune_layers=6,
                                                     patience=8))
    workdir = base / "work"
    scan(config, workdir, workers=1, quiet=True)
    manifest = read_manifest(workdir)
    order = manifest.groupby("label").cumcount()
    manifest["split"] = np.select([order < 10, order < 14], ["train", "val"], "test")
    write_manifest(manifest, workdir)
    off = base / "off.png"
    Image.new("RGB", (80, 80), (128, 128, 128)).save(off)     # flat grey: no box, no disc
    return config, workdir, off


def _copy_workdir(source: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True)
    write_manifest(read_manifest(source), workdir)
    return workdir


@pytest.mark.weights
def test_train_evaluate_predict_learn_the_easy_set(easy_set, curate_weights, tmp_path):
    from cli import main
    from training.steps import evaluate, train

    config, source, off = easy_set
    workdir = _copy_workdir(source, tmp_path)
    summary = train(config, workdir, seed=1, workers=1, quiet=True)
    model_dir = workdir / "model"
    for name in ("model.keras", "labels.json", "ood.json", "history.csv", "curves.png"):
        assert (model_dir / name).is_file(), name
    assert json.loads((model_dir / "labels.json").read_text())["classes"] == list(CLASSES)
    assert summary["val_accuracy"] >= 0.75

    metrics = evaluate(config, workdir, workers=1, quiet=True)
    assert metrics["test_images"] == 12
    assert metrics["accuracy"] >= 0.8, metrics                  # chance is 0.5
    assert json.loads((workdir / "metrics.json").read_text())["macro_f1"] == metrics["macro_f1"]
    assert (workdir / "confusion.png").is_file()

    test_image = config.root / "red_box" / "19.jpg"
    result = CliRunner().invoke(main, ["predict", str(workdir), str(test_image), str(off),
                                       "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output[result.output.index("["):])
    assert answers[0]["top_k"][0]["label"] == "red_box"
    assert {t["label"] for t in answers[0]["top_k"]} == set(CLASSES)
    assert answers[1]["verdict"] in (NOT_A_CAR, UNSURE), answers[1]


def test_random_init_run_writes_every_artifact_answers_each_image_and_repeats(easy_set, tmp_path):
    from training.predict import predict
    from training.steps import evaluate, train

    config, source, off = easy_set
    config = dataclasses.replace(config, weights="none", training=dataclasses.replace(
        config.training, epochs=1, fine_tune_epochs=1))
    workdir = _copy_workdir(source, tmp_path)
    summary = train(config, workdir, seed=0, workers=1, quiet=True)
    assert (summary["train_images"], summary["val_images"], summary["fine_tune_epochs"]) == (20, 8, 1)
    history = pd.read_csv(workdir / "model" / "history.csv")
    assert history["phase"].tolist() == ["head", "fine_tune"]
    again = _copy_workdir(source, tmp_path / "again")
    train(config, again, seed=0, workers=1, quiet=True)
    metrics = ["loss", "val_loss", "accuracy", "val_accuracy"]
    assert pd.read_csv(again / "model" / "history.csv")[metrics].equals(history[metrics])  # same seed
    assert evaluate(config, workdir, workers=1, quiet=True)["test_images"] == 12
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    answers = predict(workdir / "model", [config.root / "blue_disc" / "00.jpg", broken, off], k=2)
    assert [a["error"] is None for a in answers] == [True, False, True]
    assert all(a["verdict"] in (*CLASSES, NOT_A_CAR, UNSURE) for a in answers if not a["error"])
    assert sum(t["probability"] for t in answers[0]["top_k"]) == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_train_and_predict_run_with_the_jax_backend(easy_set, curate_weights, tmp_path):
    config, source, off = easy_set
    workdir = _copy_workdir(source, tmp_path)
    settings = {"root": str(config.root), "image_size": 64, "backbone": config.backbone,
                "weights": config.weights, "training": {"epochs": 8, "fine_tune_epochs": 1,
                                                        "batch_size": 8, "learning_rate": 0.01,
                                                        "fine_tune_layers": 6}}
    (tmp_path / "datasets.yaml").write_text(json.dumps({"datasets": {"easy": settings}}))
    env = {**os.environ, "KERAS_BACKEND": "jax", "CURATE_CONFIG": str(tmp_path / "datasets.yaml")}

    def curate(*args):
        done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout[done.stdout.index("{" if args[0] != "predict" else "["):])

    summary = curate("train", "easy", "--workdir", str(workdir), "--json", "--seed", "1")
    assert summary["backend"] == "jax" and summary["val_accuracy"] >= 0.75
    answers = curate("predict", str(workdir / "model"), str(config.root / "blue_disc" / "19.jpg"),
                     "--json")
    assert answers[0]["top_k"][0]["label"] == "blue_disc"
