"""Keras's fit and predict progress shown as the step's own, labelled with what it is doing.

Keras's own lines (`4/4 - 3s - 670ms/step`) say neither the step nor the phase; this callback
feeds curate's progress display instead: a bar on a terminal, and plain lines with count, rate
and ETA every ~10 s plus one line per epoch when stderr is a log file.
"""
from __future__ import annotations

import keras

from curation.parallel import LogProgress, progress_bar


class StepProgress(keras.callbacks.Callback):
    """Batches done across all epochs of a fit, or of one predict, under the label `desc`."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc, self.bar = desc, None

    def _open(self, epochs: int) -> None:
        steps = self.params.get("steps")
        self.bar = progress_bar(total=steps * epochs if steps else None, desc=self.desc,
                                unit="batch")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_begin(self, logs=None):
        self._open(self.params.get("epochs") or 1)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        scores = ", ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items())
        self.bar.set_postfix_str(f"epoch {epoch + 1}: {scores}")
        if isinstance(self.bar, LogProgress):   # a log gets every epoch's scores on a line
            self.bar.write(f"epoch {epoch + 1}/{self.params.get('epochs')}: {scores}")

    def on_train_end(self, logs=None):
        self._close()

    def on_predict_begin(self, logs=None):
        self._open(1)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_predict_end(self, logs=None):
        self._close()


def progress_callbacks(desc: str | None) -> list[keras.callbacks.Callback]:
    """[StepProgress(desc)], or [] for a quiet run (desc None)."""
    return [] if desc is None else [StepProgress(desc)]
