"""`curate embed` on generated photos: the cache it fills, a warm re-run that embeds nothing,
flag-noise and review reading the same cache, and the engine export cached by weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from curation.config import ConfigError, DatasetConfig
from curation.embed import engines, export
from curation.embed.step import STEP, manifest_embeddings, readable_rows
from curation.manifest import read_manifest, read_run
from curation.noise.step import flag_noise
from curation.steps import Workdir, resolve_settings

TINY = ["--backbone", "mobilenet_v1_025", "--weights", "none", "--image-size", "64"]


def unit(vectors: np.ndarray) -> np.ndarray:
    """Random-init activations are tiny; compare directions."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def scanned(class_tree, tmp_path):
    """3 classes x 4 generated photos and an unreadable file, scanned into a workdir."""
    (class_tree / "beta" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    work = tmp_path / "work"
    scan = CliRunner().invoke(main, ["scan", str(class_tree), "--workdir", str(work), "-q"])
    assert scan.exit_code == 0
    return class_tree, work


def test_embed_fills_the_cache_once_and_flag_noise_reads_it(scanned):
    root, work = scanned
    command = ["embed", str(root), "--workdir", str(work), *TINY]
    first = CliRunner().invoke(main, [*command, "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert (summary["images"], summary["computed"], summary["reused"]) == (12, 12, 0)
    assert summary["engine"] == "onnx" and summary["dimensions"] == 256
    assert read_run(work, "embed")["summary"]["computed"] == 12

    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0 and "already embedded; nothing to do" in again.output
    record = read_run(work, "embed")

    config = DatasetConfig(name="tree", root=root, image_size=64, backbone="mobilenet_v1_025",
                           weights="none")
    noise = flag_noise(config, work, quiet=True)
    assert (noise["embeddings"]["computed"], noise["embeddings"]["reused"]) == (0, 12)
    assert noise["embeddings"]["engine"] is None                  # nothing had to be embedded
    assert read_run(work, "embed") == record      # so flag-noise left the embed record alone


def test_review_map_embeds_a_cold_cache_with_the_last_settings(scanned):
    root, work = scanned
    config = DatasetConfig(name="tree", root=root, image_size=64, backbone="mobilenet_v1_025",
                           weights="none")
    rows = readable_rows(read_manifest(work))
    step = Workdir(work, config, STEP, quiet=True)
    cold = manifest_embeddings(step, rows)                          # nothing cached yet
    assert cold.shape == (12, 256) and np.isfinite(cold).all()
    assert read_run(work, "embed")["settings"]["tta"] is True
    CliRunner().invoke(main, ["embed", str(root), "--workdir", str(work), *TINY, "--no-tta", "-q"])
    plain = manifest_embeddings(step, rows)                         # the last run's (no mirror)
    assert read_run(work, "embed")["settings"]["tta"] is False
    assert not np.allclose(unit(plain), unit(cold), atol=1e-3)


def test_keras_engine_and_settings_are_checked(scanned):
    root, work = scanned
    result = CliRunner().invoke(main, ["embed", str(root), "--workdir", str(work), *TINY,
                                       "--engine", "keras", "--json", "-q"])
    assert result.exit_code == 0 and json.loads(result.output)["engine"] == "keras"
    assert "Example:" in CliRunner().invoke(main, ["embed", "--help"]).output
    config = DatasetConfig(name="tree", root=root)
    with pytest.raises(ConfigError, match="--engine"):
        resolve_settings(STEP, config, {"engine": "tensorrt"})


def test_exports_are_kept_per_weights_content(tmp_path):
    first, second = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    paths = {export.onnx_path("mobilenet_v2", str(p), 224) for p in (first, second)}
    assert len(paths) == 2 and all(p.parent.parent == export.cache_root() / export.EXPORT_FORMAT
                                   for p in paths)
    assert export.onnx_path("mobilenet_v2", "none", 224, seed=1).parent.name == "none-seed1"


def test_a_backbone_that_cannot_be_exported_runs_on_keras(tmp_path, capfd):
    out = export.onnx_path("mobilenet_v1_025", "none", 32, seed=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".failed").write_text("export failed: ValueError: planted")
    engine = engines.get_engine("onnx", "mobilenet_v1_025", "none", 32, seed=7)
    assert engine.name == "keras" and "planted" in capfd.readouterr().err
    features = engines.embed_views(engine, np.zeros((2, 32, 32, 3), np.uint8), tta=True)
    assert features.shape == (2, 256)
