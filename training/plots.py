"""Training curves and confusion matrices as PNGs (written atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from curation.figures import save_png


def training_curves(history: pd.DataFrame, out: Path) -> Path:
    """Loss and accuracy per epoch, train vs val, with the start of fine-tuning marked."""
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    x = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(x, history[metric], "o-", label=f"train {metric}")
        ax.plot(x, history[f"val_{metric}"], "o-", label=f"val {metric}")
        fine = np.flatnonzero(history["phase"].to_numpy() == "fine_tune")
        if len(fine):
            ax.axvline(fine[0] + 0.5, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    return save_png(figure, out)


def confusion_matrix_plot(matrix: np.ndarray, classes, out: Path) -> Path:
    """Row-normalised confusion matrix with counts, rows = true class."""
    n = len(classes)
    side = max(5.0, 0.38 * n + 2)
    figure = Figure(figsize=(side + 1, side))
    ax = figure.subplots()
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7 if n > 10 else 9)
    ax.set_yticks(range(n), classes, fontsize=7 if n > 10 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(matrix)):
        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6 if n > 10 else 9,
                color="white" if rates[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=ax, fraction=0.04)
    figure.tight_layout()
    return save_png(figure, out)
