"""`curate train`: transfer learning on the manifest's train split, selected on val, test untouched.

Phase 1 trains the new head on backbone embeddings computed once: the backbone is frozen and
its BatchNorm runs in inference mode, so this is the usual frozen-backbone phase without paying
for the backbone at every step (mirrored copies stand in for augmentation). Phase 2 fine-tunes
the top backbone layers at a lower rate, BatchNorm still frozen, with augmentation inside the
model so it runs on the accelerator. The best val epoch of either phase is kept.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd

from curation.embed.backbones import resolve_weights
from curation.embed.compute import EmbedSettings, embed_files
from curation.config import TrainingSettings
from curation.errors import NotEnoughData
from curation.manifest import atomic_write, atomic_write_json
from curation.steps import Workdir
from curation.vocabulary import MODEL_DIR

from .check import calibrate_wrong_model
from .data import (PixelBatches, class_weights, encode_labels, load_pixels, one_hot,
                   pixel_cache_dir, split_rows)
from .distribute import data_parallel
from .model import (accelerator, build_classifier, feature_model, head_model, save_classifier,
                    unfreeze_top, use_mixed_precision)
from .plots import training_curves
from .progress import progress_callbacks
from .predict import calibrate, flip_averaged, write_calibration
from .scratch import SCRATCH, SCRATCH_NAME, build_scratch_classifier

if TYPE_CHECKING:   # training.steps imports this module when a run starts
    from .steps import TrainSettings


def select_rows(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str], int]:
    """Train and val rows, the classes (those present in train), and how many val rows had others."""
    rows = split_rows(manifest, ("train", "val"))
    classes = sorted(rows.loc[rows["split"] == "train", "label"].unique())
    unknown = ~rows["label"].isin(classes)
    if len(classes) < 2:
        raise NotEnoughData(f"the train split holds {len(classes)} class(es); need at least 2")
    if not (rows["split"] == "val")[~unknown].any():
        raise NotEnoughData("the val split is empty: training selects its best epoch on val; "
                            "re-run `curate split` with a val ratio above 0")
    return rows[~unknown].reset_index(drop=True), classes, int(unknown.sum())


class BestEpoch(keras.callbacks.Callback):
    """Keep the epoch with the best val accuracy (ties: lower val loss), save it, stop when stale."""

    def __init__(self, patience: int, *, best=(-np.inf, -np.inf), save_to: Path | None = None):
        super().__init__()
        self.patience, self.best, self.save_to = patience, best, save_to
        self.best_epoch, self.wait, self.best_weights = None, 0, None

    def on_train_begin(self, logs=None):
        self.best_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        score = (float(logs["val_accuracy"]), -float(logs["val_loss"]))
        if score > self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            self.best_weights = self.model.get_weights()
            if self.save_to is not None:
                save_classifier(self.model, self.save_to)
        else:
            self.wait += 1
            self.model.stop_training = self.wait >= self.patience

    def on_train_end(self, logs=None):
        self.model.set_weights(self.best_weights)


class EpochTimer(keras.callbacks.Callback):
    """Seconds spent on training batches per epoch (validation excluded), for images/s."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self.last - self.start)


def _callbacks(model_dir: Path, phase: str, keeper: BestEpoch) -> list:
    timer = EpochTimer()
    found = [keeper, timer]
    if keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard"):
        found.append(keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs" / phase)))
    return found


def _history(phase: str, history: keras.callbacks.History, timer: EpochTimer, images: int) -> pd.DataFrame:
    frame = pd.DataFrame(history.history)
    frame.insert(0, "phase", phase)
    frame.insert(1, "epoch", np.arange(1, len(frame) + 1))
    frame["train_seconds"] = np.round(timer.seconds[:len(frame)], 3)
    frame["images_per_second"] = np.round(images / np.maximum(frame["train_seconds"], 1e-9), 2)
    return frame


def _compile(model: keras.Model, rate, settings: TrainingSettings) -> None:
    model.compile(optimizer=keras.optimizers.Adam(rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
                  metrics=["accuracy"])


@dataclasses.dataclass
class Run:
    """What both phases share: cached pixels, split slots and labels, settings, output folder."""

    pixels: np.ndarray
    slots: dict[str, np.ndarray]   # split -> rows of the pixel cache
    y: dict[str, np.ndarray]       # split -> class indices
    classes: list[str]
    settings: TrainingSettings
    model_dir: Path
    seed: int
    quiet: bool

    def shown(self, what: str) -> list[keras.callbacks.Callback]:
        """The progress callback labelled 'train: <what>' (none for a quiet run)."""
        return progress_callbacks(None if self.quiet else f"train: {what}")

    def batches(self, split: str, *, labels: bool = False, shuffle: bool = False,
                flip: bool = False) -> PixelBatches:
        y = one_hot(self.y[split], len(self.classes)) if labels else None
        return PixelBatches(self.pixels, self.slots[split], y, batch_size=self.settings.batch_size,
                            shuffle=shuffle, flip=flip, seed=self.seed)

    def embeddings(self, extractor: keras.Model, split: str, flip: bool = False) -> np.ndarray:
        """Embeddings of every image of a split, in split order."""
        what = f"embedding {split} images" + (" (mirrored)" if flip else "")
        return np.asarray(extractor.predict(self.batches(split, flip=flip), verbose=0,
                                            callbacks=self.shown(what))[0], np.float32)

    def class_weight(self) -> dict[int, float]:
        return class_weights(self.y["train"], len(self.classes))


def cached_features(work: Workdir, settings: TrainSettings, rows: pd.DataFrame,
                    device: str) -> tuple[np.ndarray | None, float | None]:
    """Backbone embeddings of `rows`, plain and mirrored (n, 2, d), from the embed step's cache
    (each file its own vector, near-duplicates included): its mirror-averaged vectors and its
    plain ones give the mirror view as 2 * mean - plain.
    Only missing files are embedded (ONNX Runtime on a CPU-only machine, Keras on an
    accelerator), and their images/s. None when some row has no vector or the backbone is
    randomly initialised (the cache's random weights are not the classifier's), so the head
    phase embeds them itself."""
    if resolve_weights(settings.backbone, str(settings.weights)) is None:
        return None, None
    s = EmbedSettings(backbone=settings.backbone, weights=str(settings.weights),
                      image_size=settings.image_size, seed=settings.seed,
                      engine="keras" if device != "cpu" else None, workers=settings.workers)
    root, cache = work.config.root, work.path.resolve()
    runs = [embed_files(rows["path"].tolist(), cache, root=root,
                        settings=dataclasses.replace(s, tta=tta), quiet=work.quiet)
            for tta in (False, True)]
    computed, seconds = sum(r.computed for r in runs), sum(r.seconds for r in runs)
    rate = computed / seconds if computed else None
    if any(np.isnan(r.vectors).any() for r in runs):
        return None, rate
    plain, averaged = (r.vectors for r in runs)
    return np.stack([plain, 2 * averaged - plain], axis=1).astype(np.float32), rate


def head_phase(run: Run, model: keras.Model,
               cached: np.ndarray | None = None) -> tuple[pd.DataFrame, BestEpoch, float | None]:
    """Train the head on embeddings of train images and their mirror images; keep its best val
    epoch. `cached`: cached_features of the train rows then the val rows (else embedded here)."""
    tick = time.perf_counter()
    if cached is None:
        extractor = feature_model(model)
        train_x = np.concatenate([run.embeddings(extractor, "train"),
                                  run.embeddings(extractor, "train", flip=True)])
        val_x = run.embeddings(extractor, "val")
        embed_rate = (len(train_x) + len(val_x)) / (time.perf_counter() - tick)
    else:
        n_train = len(run.slots["train"])
        train_x = np.concatenate([cached[:n_train, 0], cached[:n_train, 1]])
        val_x, embed_rate = cached[n_train:, 0], None
    n = len(run.classes)
    head = head_model(model)
    _compile(head, run.settings.learning_rate, run.settings)
    keeper = BestEpoch(run.settings.patience)
    callbacks = _callbacks(run.model_dir, "head", keeper)
    history = head.fit(train_x, one_hot(np.concatenate([run.y["train"]] * 2), n),
                       batch_size=run.settings.batch_size, epochs=run.settings.epochs,
                       class_weight=run.class_weight(), shuffle=True,
                       validation_data=(val_x, one_hot(run.y["val"], n)),
                       callbacks=callbacks + run.shown("head phase"), verbose=0)
    return _history("head", history, callbacks[1], len(train_x)), keeper, embed_rate


def fine_tune_phase(run: Run, model: keras.Model, best) -> tuple[pd.DataFrame | None, BestEpoch | None, int]:
    """Fine-tune the top backbone layers with augmentation, the rate decaying on a cosine; saves
    each epoch that beats `best` on val."""
    unfrozen = unfreeze_top(model, run.settings.fine_tune_layers)
    if not (run.settings.fine_tune_epochs and unfrozen):
        return None, None, unfrozen
    steps = len(run.batches("train")) * run.settings.fine_tune_epochs
    _compile(model, keras.optimizers.schedules.CosineDecay(run.settings.fine_tune_learning_rate,
                                                           steps, alpha=0.05), run.settings)
    keeper = BestEpoch(run.settings.patience, best=best, save_to=run.model_dir / "model.keras")
    callbacks = _callbacks(run.model_dir, "fine_tune", keeper)
    history = model.fit(run.batches("train", labels=True, shuffle=True),
                        validation_data=run.batches("val", labels=True),
                        epochs=run.settings.fine_tune_epochs, class_weight=run.class_weight(),
                        callbacks=callbacks + run.shown("fine-tuning phase"), verbose=0)
    return _history("fine_tune", history, callbacks[1], len(run.slots["train"])), keeper, unfrozen


def scratch_phase(run: Run, model: keras.Model) -> tuple[pd.DataFrame, BestEpoch]:
    """Train every layer of the small from-scratch CNN with augmentation; saves each epoch that
    beats the best val score so far."""
    _compile(model, run.settings.learning_rate, run.settings)
    keeper = BestEpoch(run.settings.patience, save_to=run.model_dir / "model.keras")
    callbacks = _callbacks(run.model_dir, "scratch", keeper)
    history = model.fit(run.batches("train", labels=True, shuffle=True),
                        validation_data=run.batches("val", labels=True),
                        epochs=run.settings.epochs, class_weight=run.class_weight(),
                        callbacks=callbacks + run.shown("small CNN from scratch"), verbose=0)
    return _history("scratch", history, callbacks[1], len(run.slots["train"])), keeper


def transfer_phases(run: Run, model: keras.Model, cached: np.ndarray | None = None
                    ) -> tuple[pd.DataFrame, dict, float | None, int]:
    """The head phase, then fine-tuning: (history, best epoch, embedding rate, layers unfrozen)."""
    head_history, keeper, embed_rate = head_phase(run, model, cached)
    save_classifier(model, run.model_dir / "model.keras")
    best = {"phase": "head", "epoch": keeper.best_epoch + 1, "score": keeper.best}
    tune_history, tuner, unfrozen = fine_tune_phase(run, model, keeper.best)
    if tuner is not None and tuner.best_epoch is not None:
        best = {"phase": "fine_tune", "epoch": tuner.best_epoch + 1, "score": tuner.best}
    history = pd.concat([h for h in (head_history, tune_history) if h is not None],
                        ignore_index=True)
    return history, best, embed_rate, unfrozen


def write_model_files(run: Run, model: keras.Model, history: pd.DataFrame, info: dict) -> dict:
    """OOD calibration, labels.json, history.csv and curves.png beside model.keras."""
    extractor = feature_model(model)
    train_features, _ = flip_averaged(extractor, run.pixels, run.slots["train"],
                                      batch_size=run.settings.batch_size,
                                      label=None if run.quiet else "train: calibrating on train")
    val_features, val_probs = flip_averaged(
        extractor, run.pixels, run.slots["val"], batch_size=run.settings.batch_size,
        label=None if run.quiet else "train: calibrating on val")
    means, calibration = calibrate(train_features, run.y["train"], val_features, val_probs,
                                   len(run.classes))
    calibration["wrong_model"] = calibrate_wrong_model(val_probs, run.y["val"])
    write_calibration(run.model_dir, means, calibration)
    atomic_write_json(run.model_dir / "labels.json", info)
    atomic_write(run.model_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
    training_curves(history, run.model_dir / "curves.png")
    return calibration


def run(work: Workdir, settings: TrainSettings) -> dict:
    """Train <workdir>/model/model.keras on the train split, choosing epochs on val; returns the summary."""
    if str(settings.weights) != SCRATCH:
        resolve_weights(settings.backbone, str(settings.weights))
    rows, classes, unknown = select_rows(work.read())
    pixels, rows, failures = load_pixels(rows, work.config.root, settings.image_size,
                                         pixel_cache_dir(work.path), workers=settings.workers,
                                         quiet=work.quiet)
    with data_parallel(settings.distribute, accelerator()) as replicas:
        summary = _train(work, settings, rows, pixels, classes)
    summary.update(left_out=[f"{p}: {r}" for p, r in failures], val_rows_with_unseen_class=unknown,
                   replicas=replicas)
    return summary


def _train(work: Workdir, settings: TrainSettings, rows: pd.DataFrame, pixels: np.ndarray,
           classes: list[str]) -> dict:
    """Both phases and the model files (inside data_parallel when --distribute)."""
    recipe, size, seed, config, workdir = (settings.recipe(), settings.image_size, settings.seed,
                                           work.config, work.path)
    backbone, weights = settings.backbone, str(settings.weights)
    if weights == SCRATCH:
        backbone = SCRATCH_NAME
    keras.utils.set_random_seed(seed)
    device = accelerator()
    policy = use_mixed_precision(device)
    y = encode_labels(rows["label"], classes)
    masks = {split: (rows["split"] == split).to_numpy() for split in ("train", "val")}
    run = Run(pixels, {s: rows["slot"].to_numpy()[m] for s, m in masks.items()},
              {s: y[m] for s, m in masks.items()}, classes, recipe, workdir / MODEL_DIR,
              seed, work.quiet)
    cached = None
    if weights == SCRATCH:
        model = build_scratch_classifier(len(classes), image_size=size, seed=seed,
                                         dropout=recipe.dropout, augment=recipe.augment)
        history, keeper = scratch_phase(run, model)
        best = {"phase": "scratch", "epoch": keeper.best_epoch + 1, "score": keeper.best}
        embed_rate, unfrozen = None, len(model.layers)
    else:
        model = build_classifier(len(classes), backbone=backbone, weights=weights,
                                 image_size=size, dropout=recipe.dropout, augment=recipe.augment,
                                 seed=seed)
        order = np.concatenate([np.flatnonzero(masks["train"]), np.flatnonzero(masks["val"])])
        cached, cache_rate = cached_features(work, settings, rows.iloc[order], device)
        history, best, embed_rate, unfrozen = transfer_phases(run, model, cached)
        embed_rate = embed_rate or cache_rate
    info = {"classes": classes, "backbone": backbone, "weights": weights, "image_size": size,
            "dataset": config.name, "seed": seed}
    calibration = write_model_files(run, model, history, info)
    fine = history[history["phase"] == "fine_tune"]
    summary = {
        "model_dir": str(run.model_dir), "classes": len(classes),
        "train_images": len(run.slots["train"]), "val_images": len(run.slots["val"]),
        "best_phase": best["phase"], "best_epoch": best["epoch"],
        "val_accuracy": round(best["score"][0], 4), "val_loss": round(-best["score"][1], 4),
        "head_epochs": int((history["phase"] == "head").sum()),
        "scratch_epochs": int((history["phase"] == "scratch").sum()),
        "fine_tune_epochs": len(fine), "unfrozen_layers": unfrozen,
        "embed_images_per_second": round(embed_rate, 1) if embed_rate else None,
        "head_features": "keras" if cached is None else "embed cache",
        "fine_tune_images_per_second": round(len(run.slots["train"]) * len(fine)
                                             / fine["train_seconds"].sum(), 1) if len(fine) else None,
        "ood_distance_threshold": round(calibration["distance_threshold"], 4),
        "min_confidence": round(calibration["min_confidence"], 4),
        "backend": keras.backend.backend(), "device": device, "precision": policy,
        "image_size": size, "backbone": backbone,
        "seconds": round(time.time() - work.started, 1),
    }
    return summary


def describe(summary: dict) -> str:
    """A short human summary of a training run."""
    speeds = [f"{name} {summary[key]} img/s" for name, key in
              (("embedding", "embed_images_per_second"),
               ("fine-tuning", "fine_tune_images_per_second")) if summary.get(key)]
    lines = [
        f"Trained {summary['backbone']} at {summary['image_size']} px on {summary['train_images']} "
        f"images, {summary['classes']} classes ({summary['backend']} on {summary['device']}, "
        f"{summary['precision']}) in {summary['seconds']} s.",
        f"Best: {summary['best_phase']} epoch {summary['best_epoch']}, val accuracy "
        f"{summary['val_accuracy']} ({summary['val_images']} images), val loss {summary['val_loss']}.",
        *([f"Speed: {'; '.join(speeds)}."] if speeds else []),
        f"Model: {summary['model_dir']}/model.keras (+ labels.json, ood.json, history.csv, curves.png)",
    ]
    if summary["left_out"]:
        lines.append(f"Left out {len(summary['left_out'])} undecodable files: "
                     + "; ".join(summary["left_out"][:5]))
    if summary["val_rows_with_unseen_class"]:
        lines.append(f"{summary['val_rows_with_unseen_class']} val rows have a class absent from "
                     f"train and were ignored.")
    return "\n".join(lines)
