"""The serving forward pass (training/forward.py): the ONNX export of a trained classifier gives
Keras's probabilities and embeddings, is made once per model.keras, and a model whose export
fails still runs on keras."""
from __future__ import annotations

import json

import numpy as np
import pytest

from curation.images import load_array
from training.forward import onnx_file
from training.predict import Predictor

from tests.conftest import synthetic_photo


def _classifier(folder, backbone: str, weights: str, size: int, classes: int = 3, seed: int = 0):
    """A classifier with a random head (and the named backbone weights) saved as a model folder."""
    import keras

    from training.model import build_classifier, save_classifier
    from training.predict import write_calibration

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = build_classifier(classes, backbone=backbone, weights=weights, image_size=size)
    save_classifier(model, folder / "model.keras")
    dim = model.get_layer("head_dropout").input.shape[-1]
    means = np.random.default_rng(seed).normal(size=(classes, dim))
    write_calibration(folder, means / np.linalg.norm(means, axis=1, keepdims=True),
                      {"distance_threshold": 1.0, "min_confidence": 0.0})
    (folder / "labels.json").write_text(json.dumps({
        "classes": [f"c{k}" for k in range(classes)], "image_size": size, "backbone": backbone,
        "weights": weights}))
    return folder


def _same_scores(folder, pixels: np.ndarray) -> tuple[Predictor, np.ndarray]:
    keras_run, onnx_run = Predictor(folder, engine="keras"), Predictor(folder, engine="onnx")
    assert (keras_run.engine, onnx_run.engine) == ("keras", "onnx")
    (p_keras, d_keras), (p_onnx, d_onnx) = (run.scores_in_memory(pixels, batch_size=4)
                                            for run in (keras_run, onnx_run))
    np.testing.assert_allclose(p_onnx, p_keras, atol=1e-4)
    np.testing.assert_allclose(d_onnx, d_keras, atol=1e-4)
    return onnx_run, p_onnx


def test_onnx_export_is_made_once_per_model_and_matches_keras(tmp_path):
    folder = _classifier(tmp_path / "model", "mobilenet_v1_025", "none", 32)
    pixels = np.stack([np.asarray(synthetic_photo(i).resize((32, 32))) for i in range(7)])
    onnx_run, probs = _same_scores(folder, pixels)
    # and the serving path agrees with the flip-averaged dataset path predict and training use
    np.testing.assert_allclose(probs, onnx_run.scores(pixels)[0], atol=1e-4)
    export = onnx_file(folder)
    assert export.exists() and onnx_run.engine == "onnx"
    made = export.stat().st_mtime_ns
    assert Predictor(folder, engine="onnx").engine == "onnx"
    assert export.stat().st_mtime_ns == made                      # reused, not exported again
    _classifier(folder, "mobilenet_v1_025", "none", 32, seed=1)   # retrained: a new export
    assert onnx_file(folder) != export


def test_a_model_that_cannot_be_exported_runs_on_keras(tmp_path, capsys):
    folder = _classifier(tmp_path / "model", "mobilenet_v1_025", "none", 32)
    onnx_file(folder).with_suffix(".failed").write_text("export failed: for the test")
    predictor = Predictor(folder, engine="onnx")
    assert predictor.engine == "keras"
    assert "using keras" in capsys.readouterr().err
    probs, _ = predictor.scores_in_memory(np.zeros((3, 32, 32, 3), np.uint8))
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.real_data
@pytest.mark.weights
@pytest.mark.slow
def test_onnx_matches_keras_on_real_photos_with_imagenet_weights(tmp_path, curate_data,
                                                                 curate_weights):
    folder = _classifier(tmp_path / "model", "mobilenet_v2", "imagenet", 96, classes=5)
    paths = sorted((curate_data / "stanford-cars-25").rglob("*.jpg"))[::97][:6]
    _, probs = _same_scores(folder, np.stack([load_array(p, 96) for p in paths]))
    assert probs.max(axis=1).min() < 0.999   # a real, undecided head: the check is not vacuous
