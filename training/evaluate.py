"""`curate evaluate`: score a trained model on the test split, once, and show where it fails.

Writes metrics.json (accuracy, macro-F1, per-class report, confusion matrix, how often the
'not a car' / 'unsure' guard fires on real test cars and on an optional folder of non-cars),
confusion.png, misclassified.png and predictions.csv into the workdir, or beside the model
when another model folder is scored on this dataset's test split.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from curation.errors import NotEnoughData
from curation.images import image_files
from curation.manifest import atomic_write, atomic_write_json
from curation.parallel import map_files
from curation.sheets import contact_sheet
from curation.steps import Workdir
from curation.vocabulary import MODEL_DIR

from .data import decode_file, encode_labels, load_pixels, pixel_cache_dir, split_rows
from .plots import confusion_matrix_plot
from .predict import NOT_A_CAR, UNSURE, Predictor

if TYPE_CHECKING:   # training.steps imports this module when a run starts
    from .steps import EvaluateSettings

def score(y_true: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(classes),
                                   output_dict=True, zero_division=0)
    per_class = {name: {k: round(float(v), 4) for k, v in report[name].items()} for name in classes}
    return {
        "accuracy": round(float((y_pred == y_true).mean()), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                         zero_division=0)), 4),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def guard_rates(verdicts: list[str], y_true: np.ndarray | None = None, classes=None) -> dict:
    """How often the guard answers 'not a car' / 'unsure', and accuracy where it does answer."""
    verdicts = np.asarray(verdicts, dtype=object)
    rates = {"not_a_car": round(float((verdicts == NOT_A_CAR).mean()), 4) if len(verdicts) else None,
             "unsure": round(float((verdicts == UNSURE).mean()), 4) if len(verdicts) else None}
    if y_true is not None:
        answered = (verdicts != NOT_A_CAR) & (verdicts != UNSURE)
        truth = np.asarray(classes, dtype=object)[y_true]
        rates["accuracy_when_answered"] = (round(float((verdicts[answered] == truth[answered]).mean()), 4)
                                           if answered.any() else None)
    return rates


def misclassified_rows(frame: pd.DataFrame, root: Path, per_row: int = 8) -> list:
    """Contact-sheet rows, one per true class, of its wrong predictions (most confident first)."""
    wrong = frame[frame["label"] != frame["predicted"]].sort_values("confidence", ascending=False)
    return [(f"true {label}: {len(group)} wrong",
             [(Path(root) / path, f"-> {pred}\n{conf:.2f}")
              for path, pred, conf in zip(group["path"], group["predicted"], group["confidence"])][:per_row])
            for label, group in wrong.groupby("label", sort=True)]


def ood_folder_rates(predictor: Predictor, folder: Path, batch_size: int, *,
                     workers: int | None = None, quiet: bool = False) -> dict:
    """Guard rates on a folder of images that are not of any trained class (e.g. non-car photos)."""
    decoded = map_files(decode_file, [(str(p), predictor.image_size) for p in image_files(folder)],
                        workers=workers, desc="decode ood folder", quiet=quiet)
    arrays = [array for array, _ in decoded if array is not None]
    if not arrays:
        return {"folder": str(folder), "images": 0}
    probs, distances = predictor.scores(np.stack(arrays), batch_size=batch_size)
    rates = guard_rates(predictor.verdicts(probs, distances))
    return {"folder": str(folder), "images": len(arrays), **rates,
            "flagged": round(rates["not_a_car"] + rates["unsure"], 4)}


def run(work: Workdir, settings: EvaluateSettings) -> dict:
    """Score the model on the workdir's test split; write metrics.json and plots; return the metrics."""
    config, batch_size, workers, quiet = work.config, settings.batch_size, settings.workers, work.quiet
    out = settings.model_dir or work.path
    model_dir = settings.model_dir or work.path / MODEL_DIR
    predictor = Predictor(model_dir)
    classes = predictor.classes
    rows = split_rows(work.read(), ("test",))
    pixels, rows, failures = load_pixels(rows, config.root, predictor.image_size,
                                         pixel_cache_dir(work.path), workers=workers, quiet=quiet)
    y = encode_labels(rows["label"], classes)
    known = y >= 0
    rows, y = rows[known].reset_index(drop=True), y[known]
    if not len(rows):
        raise NotEnoughData("the test split holds no image of a class the model knows")
    probs, distances = predictor.scores(pixels, rows["slot"].to_numpy(), batch_size=batch_size,
                                        label=None if quiet else "evaluate: test images")
    verdicts = predictor.verdicts(probs, distances)
    metrics = {"dataset": config.name, "model_dir": str(model_dir), "test_images": int(len(y)),
               "test_rows_with_unknown_class": int((~known).sum()),
               "left_out": [f"{p}: {r}" for p, r in failures],
               **score(y, probs, classes), "guard_on_test": guard_rates(verdicts, y, classes)}
    if settings.ood_folder is not None:
        metrics["guard_on_ood_folder"] = ood_folder_rates(predictor, settings.ood_folder,
                                                          batch_size, workers=workers, quiet=quiet)
    frame = rows[["path", "label"]].assign(
        predicted=np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
        confidence=probs.max(axis=1).round(4), ood_distance=np.round(distances, 4),
        verdict=verdicts)
    atomic_write(out / "predictions.csv", lambda tmp: frame.to_csv(tmp, index=False))
    confusion_matrix_plot(np.asarray(metrics["confusion_matrix"]), classes, out / "confusion.png")
    sheet = contact_sheet(misclassified_rows(frame, config.root), out / "misclassified.png")
    metrics["misclassified_sheet"] = str(sheet) if sheet else None
    metrics["seconds"] = round(time.time() - work.started, 1)
    metrics["out_dir"] = str(out)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def describe(metrics: dict) -> str:
    """A short human summary: headline scores, weakest classes, guard rates, where files went."""
    weakest = sorted(metrics["per_class"].items(), key=lambda item: item[1]["f1-score"])[:3]
    guard = metrics["guard_on_test"]
    lines = [f"Test: accuracy {metrics['accuracy']}, macro-F1 {metrics['macro_f1']} on "
             f"{metrics['test_images']} images of {len(metrics['per_class'])} classes.",
             "Weakest classes (F1): " + ", ".join(f"{name} {m['f1-score']:.2f}" for name, m in weakest),
             f"Guard on test cars: {guard['not_a_car']:.1%} 'not a car', {guard['unsure']:.1%} "
             f"'unsure'; accuracy when it answers {guard['accuracy_when_answered']}."]
    if "guard_on_ood_folder" in metrics:
        ood = metrics["guard_on_ood_folder"]
        lines.append(f"Guard on {ood['images']} images of {ood['folder']}: "
                     f"{ood.get('flagged', 0):.1%} flagged ({ood.get('not_a_car', 0):.1%} not a car).")
    lines.append(f"Wrote {metrics['out_dir']}/metrics.json, confusion.png, misclassified.png, "
                 f"predictions.csv")
    return "\n".join(lines)
