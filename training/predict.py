"""`curate predict`: top-k make-model for images, or 'not a car' / 'unsure' when the model should not answer.

Out-of-distribution inputs are caught by the cosine distance of their embedding to the nearest
training-class mean; low-confidence ones by the max softmax. Both thresholds are calibrated on
the validation split at training time and stored in the model folder (ood.json).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from curation.embed.engines import mirror_averaged
from curation.images import ImageError, load_array
from curation.manifest import atomic_write, atomic_write_json
from curation.errors import ModelMissing
from curation.vocabulary import centre_distance, unit_rows

from .data import PixelBatches
from .forward import forward_pass
from .model import feature_model, load_classifier
from .progress import progress_callbacks

NOT_A_CAR = "not a car"
UNSURE = "unsure"
DISTANCE_QUANTILE = 0.99    # 1% of real cars lie further from every class mean (log-normal fit)
CONFIDENCE_QUANTILE = 0.05  # the 5% least confident validation predictions count as unsure


def class_means(features: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit-norm mean embedding per class (n_classes, dim)."""
    unit = unit_rows(features)
    means = np.stack([unit[y == k].mean(axis=0) if np.any(y == k) else np.zeros(unit.shape[1])
                      for k in range(n_classes)])
    return unit_rows(means)


def tail_quantile(distances: np.ndarray, quantile: float) -> float:
    """The quantile of a log-normal fitted to the distances. A small val split's empirical 99th
    percentile is just its largest distance: on swift-wagonr (42 val photos) that cut-off called
    5.6 % of the train cars "not a car"; the fit's cut-off 0.8 %, with every non-car still out."""
    logs = np.log(np.maximum(np.asarray(distances, np.float64), 1e-6))
    spread = logs.std(ddof=1) if len(logs) > 1 else 0.0
    return float(np.exp(logs.mean() + stats.norm.ppf(quantile) * spread))


def ood_distance(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Cosine distance from each embedding to its nearest class mean (0 = on a mean, 2 = opposite):
    flag-noise's distance rule (vocabulary.centre_distance), centres from clean train labels."""
    return centre_distance(unit_rows(features), means)


def calibrate(train_features: np.ndarray, train_y: np.ndarray, val_features: np.ndarray,
              val_probs: np.ndarray, n_classes: int, *, distance_quantile: float = DISTANCE_QUANTILE,
              confidence_quantile: float = CONFIDENCE_QUANTILE) -> tuple[np.ndarray, dict]:
    """Class means from train embeddings and the guard's thresholds from validation quantiles.

    Calibrates two cut-offs of a trained model, unlike flag-noise's temperature_scale, which
    calibrates cross-validated probabilities; nothing here rescales a probability."""
    means = class_means(train_features, train_y, n_classes)
    distances = ood_distance(val_features, means)
    return means, {
        "method": "cosine distance to nearest train class mean (log-normal fit); max softmax",
        "distance_threshold": tail_quantile(distances, distance_quantile),
        "min_confidence": float(np.quantile(val_probs.max(axis=1), confidence_quantile)),
        "distance_quantile": distance_quantile, "confidence_quantile": confidence_quantile,
        "val_images": int(len(val_features)),
    }


def verdicts(probs: np.ndarray, distances: np.ndarray, classes, calibration: dict, *,
             min_confidence: float | None = None) -> list[str]:
    """The top class, 'not a car' beyond the distance threshold, or 'unsure' below the confidence."""
    floor = calibration["min_confidence"] if min_confidence is None else min_confidence
    out = []
    for p, d in zip(probs, distances):
        if d > calibration["distance_threshold"]:
            out.append(NOT_A_CAR)
        elif p.max() < floor:
            out.append(UNSURE)
        else:
            out.append(classes[int(p.argmax())])
    return out


def top_k(probs: np.ndarray, classes, k: int) -> list[list[dict]]:
    """The k most probable classes per row, as {label, probability}."""
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[{"label": classes[i], "probability": round(float(p[i]), 4)} for i in row]
            for p, row in zip(probs, order)]


def write_calibration(model_dir: Path, means: np.ndarray, calibration: dict) -> None:
    """Store the class means and thresholds that predict and evaluate use."""
    atomic_write(Path(model_dir) / "class_means.npy", lambda tmp: np.save(tmp, means))
    atomic_write_json(Path(model_dir) / "ood.json", calibration)


def read_model_info(model_dir: Path) -> tuple[dict, dict, np.ndarray]:
    """labels.json, ood.json and the class means of a trained model folder."""
    model_dir = Path(model_dir)
    if not (model_dir / "model.keras").exists():
        raise ModelMissing(f"{model_dir}: no model.keras here; run `curate train` first "
                                f"(the model folder is <workdir>/model)")
    info = json.loads((model_dir / "labels.json").read_text())
    calibration = json.loads((model_dir / "ood.json").read_text())
    return info, calibration, np.load(model_dir / "class_means.npy")


def flip_averaged(model, pixels: np.ndarray, slots: np.ndarray | None = None, *,
                  batch_size: int = 32, label: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, probabilities) of a feature_model, averaged over each image and its mirror.

    Test-time flip averaging costs a second forward pass and is worth 1-2 points of accuracy
    on fine-grained cars; training calibrates the OOD thresholds on the same averaged outputs.
    label names the progress shown (None: none).
    """
    slots = np.arange(len(pixels)) if slots is None else slots
    runs = [model.predict(PixelBatches(pixels, slots, batch_size=batch_size, flip=flip),
                          verbose=0, callbacks=progress_callbacks(
                              label and f"{label}{' (mirrored)' if flip else ''}"))
            for flip in (False, True)]
    features = np.mean([np.asarray(f, np.float32) for f, _ in runs], axis=0)
    return features, np.mean([np.asarray(p, np.float32) for _, p in runs], axis=0)


class Predictor:
    """A trained model folder, loaded once: probabilities, OOD distances and verdicts for images.
    engine (forward.py's onnx or keras) runs scores_in_memory, the serving path."""

    def __init__(self, model_dir: Path, *, engine: str = "keras"):
        self.info, self.calibration, self.means = read_model_info(model_dir)
        self.classes, self.image_size = self.info["classes"], self.info["image_size"]
        self.model = feature_model(load_classifier(Path(model_dir) / "model.keras"))
        self.engine, self._forward = forward_pass(model_dir, self.model, engine)

    def scores(self, pixels: np.ndarray, slots: np.ndarray | None = None, *, batch_size: int = 32,
               label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, OOD distances) for uint8-range pixels (rows `slots`), mirror-averaged."""
        features, probs = flip_averaged(self.model, pixels, slots, batch_size=batch_size,
                                        label=label)
        return probs, ood_distance(features, self.means)

    def scores_in_memory(self, pixels: np.ndarray, *, batch_size: int = 32
                         ) -> tuple[np.ndarray, np.ndarray]:
        """scores() for a few images already in memory (for serving): each chunk and its
        mirror in one call of the engine, without the dataset pipeline's per-call overhead."""
        features, probs = [], []
        for start in range(0, len(pixels), batch_size):
            chunk = np.asarray(pixels[start:start + batch_size], dtype=np.float32)
            f, p = mirror_averaged(self._forward, chunk)
            features.append(f)
            probs.append(p)
        return np.concatenate(probs), ood_distance(np.concatenate(features), self.means)

    def warm_up(self, max_batch: int = 32) -> None:
        """Run scores_in_memory's batch shapes (1, 2, 4, ... max_batch) before the first
        request, so no request waits for a compilation."""
        blank = np.zeros((max_batch, self.image_size, self.image_size, 3), np.uint8)
        size = 1
        while size <= max_batch:
            self.scores_in_memory(blank[:size], batch_size=max_batch)
            size *= 2

    def verdicts(self, probs: np.ndarray, distances: np.ndarray,
                 min_confidence: float | None = None) -> list[str]:
        return verdicts(probs, distances, self.classes, self.calibration,
                        min_confidence=min_confidence)


def predict(model_dir: Path, images, *, k: int = 3, min_confidence: float | None = None,
            batch_size: int = 32) -> list[dict]:
    """One result per image, in order: verdict, top-k, confidence, OOD distance, or the error."""
    predictor = Predictor(model_dir)
    results, arrays, loaded = [], [], []
    for path in images:
        try:
            arrays.append(load_array(Path(path), predictor.image_size))
            loaded.append(len(results))
            results.append({"path": str(path)})
        except (ImageError, OSError) as exc:
            results.append({"path": str(path), "verdict": None, "error": str(exc)})
    if arrays:
        probs, distances = predictor.scores(np.stack(arrays), batch_size=batch_size)
        labels = predictor.verdicts(probs, distances, min_confidence)
        ranked = top_k(probs, predictor.classes, k)
        for i, verdict, top, p, d in zip(loaded, labels, ranked, probs, distances):
            results[i].update(verdict=verdict, top_k=top, confidence=round(float(p.max()), 4),
                              ood_distance=round(float(d), 4), error=None)
    return results


def describe(results: list[dict]) -> str:
    """One line per image: verdict and the top-k with probabilities."""
    lines = []
    for r in results:
        if r.get("error"):
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        ranked = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top_k"])
        lines.append(f"{r['path']}: {r['verdict']}  [{ranked}]  (distance {r['ood_distance']:.3f})")
    return "\n".join(lines)
