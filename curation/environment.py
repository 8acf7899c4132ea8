"""Process-wide settings curate wants, applied once by the CLI entry point (never at import):
quiet TensorFlow start-up logs, a non-interactive matplotlib backend, PIL refusing truncated
images. Library callers keep their own process settings."""
from __future__ import annotations

import os


def prepare() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MPLBACKEND", "Agg")
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
