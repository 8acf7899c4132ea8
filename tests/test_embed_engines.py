"""The onnx and keras engines on real photos (same vectors, same flags), and a `curate embed` run
killed with SIGKILL that resumes from its last checkpoint. Need $CURATE_DATA and $CURATE_WEIGHTS."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from curation.embed import cache
from curation.embed.compute import CHECKPOINT_IMAGES, EmbedSettings, embed_files
from curation.noise.signals import NoiseParams
from curation.noise.step import judge
from tests.conftest import REPO

pytestmark = [pytest.mark.real_data, pytest.mark.weights, pytest.mark.slow]
IMAGENET = dict(backbone="mobilenet_v2", weights="imagenet", image_size=224)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photos(curate_data, curate_weights) -> pd.DataFrame:
    """16 cars of each of 5 models, and 8 non-car photos filed under the first model."""
    cars = curate_data / "stanford-cars-25"
    rows = [(str(p.relative_to(curate_data)), folder.name)
            for folder in sorted(cars.iterdir())[:5] for p in sorted(folder.glob("*.jpg"))[:16]]
    first = rows[0][1]
    rows += [(str(p.relative_to(curate_data)), first)
             for p in sorted((curate_data / "non-car").glob("*.jpg"))[:8]]
    return pd.DataFrame(rows, columns=["path", "label"])


def test_onnx_and_keras_engines_give_the_same_vectors_and_flags(photos, curate_data, tmp_path):
    vectors = {}
    for engine in ("onnx", "keras"):
        run = embed_files(photos["path"].tolist(), tmp_path / engine, root=curate_data,
                          settings=EmbedSettings(engine=engine, **IMAGENET), quiet=True)
        assert run.engine == engine and run.computed == len(photos) and not run.failed
        vectors[engine] = run.vectors
    assert cosines(vectors["onnx"], vectors["keras"]).min() >= 0.999
    flags = {engine: judge(photos, v, NoiseParams(), threshold=None, max_flag_rate=0.3)[0]
             for engine, v in vectors.items()}
    for column in ("noise_flag", "noise_reason", "suggested_label"):
        pd.testing.assert_series_equal(flags["onnx"][column], flags["keras"][column])
    noncar = flags["onnx"]["path"].str.startswith("non-car/")
    assert (flags["onnx"].loc[noncar, "noise_reason"] == "non_car").mean() >= 0.75


def curate(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), *args]


def test_sigkilled_embed_resumes_from_its_last_checkpoint(curate_data, curate_weights, tmp_path):
    dataset, workdir = str(curate_data / "stanford-cars-25"), tmp_path / "work"
    common = ["--workdir", str(workdir), "--no-tta", "-q"]
    subprocess.run(curate("scan", dataset, "--workdir", str(workdir), "-q"), check=True,
                   capture_output=True)
    path = cache.cache_file(workdir, "mobilenet_v2", 224, "imagenet", tta=False)
    run = subprocess.Popen(curate("embed", dataset, *common), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not cache.checkpoint_parts(path) and run.poll() is None:
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    kept, kept_vectors = cache.read_cache(path)
    assert CHECKPOINT_IMAGES <= len(kept) < 1102   # at most the batches after the checkpoint lost

    again = subprocess.run(curate("embed", dataset, *common, "--json"), capture_output=True,
                           text=True, check=True)
    summary = json.loads(again.stdout)
    assert summary["reused"] == len(kept)
    assert summary["computed"] == summary["unique_files"] - len(kept) > 0
    assert not cache.parts_dir(path).exists()

    keys, vectors = cache.read_cache(path)
    sample = pd.concat([kept.iloc[:24], keys[~keys["path"].isin(kept["path"])].iloc[:24]])
    fresh = embed_files(sample["path"].tolist(), tmp_path / "fresh", root=dataset, quiet=True,
                        settings=EmbedSettings(tta=False, **IMAGENET)).vectors
    resumed = vectors[keys.reset_index().set_index("path").loc[sample["path"], "index"]]
    np.testing.assert_allclose(resumed, fresh, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(kept_vectors[:24], resumed[:24])


def test_train_head_features_come_from_the_embed_cache_and_match_the_classifier(
        photos, curate_data, tmp_path):
    from types import SimpleNamespace

    from curation.images import load_array
    from training.model import build_classifier, feature_model
    from training.train import cached_features

    rows = photos.iloc[::8].reset_index(drop=True)            # 11 photos of 5 models + non-car
    work = SimpleNamespace(config=SimpleNamespace(root=curate_data), path=tmp_path, quiet=True)
    settings = SimpleNamespace(seed=0, workers=1, **IMAGENET)
    features, rate = cached_features(work, settings, rows, "cpu")
    assert features.shape == (len(rows), 2, 1280) and rate > 0
    extractor = feature_model(build_classifier(3, augment=False, **IMAGENET))
    pixels = np.stack([load_array(curate_data / p, 224) for p in rows["path"]]).astype(np.float32)
    for view, batch in enumerate((pixels, pixels[:, :, ::-1])):   # plain, then mirrored
        own = np.asarray(extractor.predict(batch, verbose=0)[0])
        assert cosines(features[:, view], own).min() >= 0.999
    again, rate = cached_features(work, settings, rows, "cpu")
    assert rate is None and np.array_equal(again, features)     # nothing embedded twice
