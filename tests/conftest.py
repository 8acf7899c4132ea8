"""Shared fixtures: generated images for core tests, and the shared real data when present."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def killed_on_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """A server started in its own session by a test: its whole group is SIGKILLed if the test
    leaves before it stopped, so a failing test never leaves a server behind."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _existing_dir(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Iterator[Path]:
    """ONNX exports go to a folder of this test session (a CLI run in a subprocess inherits it),
    not the user's ~/.cache/curate."""
    folder = tmp_path_factory.mktemp("curate-cache")
    previous = os.environ.get("CURATE_CACHE")
    os.environ["CURATE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CURATE_CACHE", None)
    else:
        os.environ["CURATE_CACHE"] = previous


@pytest.fixture(scope="session")
def curate_data() -> Path:
    """$CURATE_DATA, or skip: real-photo tests need the shared data folder."""
    folder = _existing_dir("CURATE_DATA")
    if folder is None:
        pytest.skip("CURATE_DATA is not set to the shared data folder (../shared/data)")
    return folder


@pytest.fixture(scope="session")
def curate_weights() -> Path:
    """$CURATE_WEIGHTS, or skip: embedding tests need offline ImageNet weights."""
    folder = _existing_dir("CURATE_WEIGHTS")
    if folder is None or not any(folder.glob("mobilenet*")):
        pytest.skip("CURATE_WEIGHTS is not set to a folder with MobileNet weights (../shared/weights)")
    return folder


def synthetic_photo(seed: int, size: tuple[int, int] = (160, 120), *, shape: str = "car") -> Image.Image:
    """A distinct, photo-like RGB image: textured background and a coloured object.

    Different seeds give visually different images (distinct perceptual hashes);
    the same seed always gives the same image.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    freq = rng.uniform(0.02, 0.12, size=2)
    phase = rng.uniform(0, 6.28, size=3)
    base = np.stack([127 + 100 * np.sin(freq[0] * xx + freq[1] * yy + p) for p in phase], axis=-1)
    noise = rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
    x0, y0 = int(rng.integers(0, width // 3)), int(rng.integers(height // 3, height // 2))
    if shape == "car":
        draw.rectangle([x0, y0, x0 + width // 2, y0 + height // 4], fill=colour)
        draw.ellipse([x0 + 5, y0 + height // 5, x0 + 25, y0 + height // 5 + 20], fill=(20, 20, 20))
    else:
        draw.ellipse([x0, y0 - 20, x0 + width // 3, y0 + height // 3], fill=colour)
    return image


@pytest.fixture
def make_image():
    """make_image(path, seed=0, size=(160,120), fmt=None, mode='RGB', **save_kwargs) -> Path."""

    def make(path: Path, seed: int = 0, size=(160, 120), fmt: str | None = None,
             mode: str = "RGB", **save_kwargs) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = synthetic_photo(seed, size)
        if mode != "RGB":
            image = image.convert(mode)
        image.save(path, format=fmt, **save_kwargs)
        return path

    return make


@pytest.fixture
def class_tree(tmp_path, make_image):
    """A small class-folder dataset: 3 classes x 4 distinct JPEGs under tmp_path/'data'."""
    root = tmp_path / "data"
    for c, label in enumerate(["alpha", "beta", "gamma"]):
        for i in range(4):
            make_image(root / label / f"{i}.jpg", seed=100 * c + i)
    return root
