"""Embedding cache: reuse across runs, re-embedding changed files, duplicates embedded once,
checkpoints that a killed run resumes from."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
from PIL import ImageOps

from curation.embed import cache as embed_cache
from curation.embed.cache import cache_file, load_cached_embeddings, representatives, weights_tag
from curation.embed.compute import EmbedSettings, embed_files, embed_manifest
from tests.conftest import synthetic_photo

# Random-init weights: no download, no $CURATE_WEIGHTS; the cache logic is the same.
SETTINGS = EmbedSettings(backbone="mobilenet_v1_025", weights="none", image_size=64, batch_size=4,
                         workers=1)
OPTIONS = dict(settings=SETTINGS, quiet=True)


def unit(v: np.ndarray) -> np.ndarray:
    """Random-init activations are tiny; compare directions."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def manifest_for(root, names) -> pd.DataFrame:
    rows = []
    for name in names:
        info = os.stat(root / name)
        rows.append({"path": name, "label": name.split("/")[0], "bytes": info.st_size,
                     "mtime": info.st_mtime})
    return pd.DataFrame(rows)


@pytest.fixture
def photos(tmp_path, make_image):
    root = tmp_path / "data"
    names = [f"{c}/{i}.jpg" for c in ("sedan", "suv") for i in range(3)]
    for k, name in enumerate(names):
        make_image(root / name, seed=k)
    return root, names


def test_second_run_reuses_every_vector(photos, tmp_path):
    root, names = photos
    manifest = manifest_for(root, names)
    first = embed_manifest(manifest, root, tmp_path / "work", **OPTIONS)
    assert first.vectors.shape == (6, 256) and np.isfinite(first.vectors).all()
    assert (first.computed, first.reused) == (6, 0)
    assert first.cache_file == cache_file(tmp_path / "work", "mobilenet_v1_025", 64, "none")
    assert first.cache_file.name == "mobilenet_v1_025_64_none_tta.npz"
    second = embed_manifest(manifest, root, tmp_path / "work", **OPTIONS)
    assert (second.computed, second.reused) == (0, 6)
    np.testing.assert_array_equal(first.vectors, second.vectors)


def test_vectors_cached_by_an_older_decoder_are_embedded_again(photos, tmp_path, monkeypatch):
    root, names = photos
    manifest = manifest_for(root, names)
    first = embed_manifest(manifest, root, tmp_path / "work", **OPTIONS)
    monkeypatch.setattr(embed_cache, "DECODE_VERSION", embed_cache.DECODE_VERSION + 1)
    again = embed_manifest(manifest, root, tmp_path / "work", **OPTIONS)
    assert (again.computed, again.reused) == (6, 0)
    np.testing.assert_array_equal(first.vectors, again.vectors)   # same decoder in truth


def test_changed_file_is_embedded_again_and_others_reused(photos, tmp_path, make_image):
    root, names = photos
    work = tmp_path / "work"
    before = embed_manifest(manifest_for(root, names), root, work, **OPTIONS).vectors
    make_image(root / names[2], seed=99, size=(200, 150))
    after = embed_manifest(manifest_for(root, names), root, work, **OPTIONS)
    assert (after.computed, after.reused) == (1, 5)
    assert not np.allclose(unit(before[2]), unit(after.vectors[2]), atol=1e-3)
    np.testing.assert_array_equal(np.delete(before, 2, 0), np.delete(after.vectors, 2, 0))


def test_duplicates_are_embedded_once_and_share_the_keeper_vector(photos, tmp_path):
    root, names = photos
    manifest = manifest_for(root, names)
    manifest["dup_of"] = [None, names[0], None, None, None, None]
    manifest["sha256"] = ["a", "b", "c", "d", "d", "e"]      # rows 3 and 4: identical bytes
    assert representatives(manifest).tolist() == [names[0], names[0], names[2], names[3],
                                                  names[3], names[5]]
    run = embed_manifest(manifest, root, tmp_path / "work", **OPTIONS)
    assert run.computed == 4
    np.testing.assert_array_equal(run.vectors[0], run.vectors[1])
    np.testing.assert_array_equal(run.vectors[3], run.vectors[4])


def test_unreadable_file_is_reported_and_left_out(photos, tmp_path):
    root, names = photos
    (root / "suv" / "broken.jpg").write_bytes(b"not a jpeg at all")
    run = embed_files([*names, "suv/broken.jpg"], tmp_path / "work", root=root, **OPTIONS)
    assert list(run.failed) == ["suv/broken.jpg"] and "not an image" in run.failed["suv/broken.jpg"]
    assert np.isnan(run.vectors[-1]).all() and np.isfinite(run.vectors[:-1]).all()


def test_mirror_views_make_embeddings_mirror_invariant(tmp_path):
    original = synthetic_photo(5, (96, 96))
    original.save(tmp_path / "a.png")
    ImageOps.mirror(original).save(tmp_path / "b.png")
    vectors = embed_files(["a.png", "b.png"], tmp_path / "work", root=tmp_path, **OPTIONS).vectors
    np.testing.assert_allclose(unit(vectors[0]), unit(vectors[1]), atol=1e-4)
    plain = embed_files(["a.png", "b.png"], tmp_path / "work", root=tmp_path, quiet=True,
                        settings=dataclasses.replace(SETTINGS, tta=False)).vectors
    assert not np.allclose(unit(plain[0]), unit(plain[1]), atol=1e-3)


def test_cached_embeddings_load_without_a_model_aligned_to_the_manifest(photos, tmp_path):
    root, names = photos
    manifest = manifest_for(root, names)
    run = embed_manifest(manifest.iloc[:4], root, tmp_path / "work", **OPTIONS)
    loaded = load_cached_embeddings(tmp_path / "work", manifest, cache=run.cache_file)
    np.testing.assert_array_equal(loaded[:4], run.vectors)
    assert np.isnan(loaded[4:]).all()
    assert load_cached_embeddings(tmp_path / "empty", manifest) is None


def test_weights_file_tag_changes_with_its_content(tmp_path):
    first = tmp_path / "mine.weights.h5"
    first.write_bytes(b"one")
    tag = weights_tag("mobilenet_v2", str(first))
    assert tag.startswith("mine-") and tag != "imagenet"
    first.write_bytes(b"two")
    assert weights_tag("mobilenet_v2", str(first)) != tag
    assert weights_tag("mobilenet_v2", "none") == "none"


def test_a_run_killed_mid_way_resumes_from_its_last_checkpoint(tmp_path, make_image, monkeypatch):
    from curation.embed import cache, compute

    names = [f"car/{i}.jpg" for i in range(10)]
    for i, name in enumerate(names):
        make_image(tmp_path / "data" / name, seed=i)
    clean = embed_files(names, tmp_path / "clean", root=tmp_path / "data", **OPTIONS)
    real_embed, calls = compute.embed_views, []

    def dies_at_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(compute, "embed_views", dies_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_files(names, tmp_path / "work", root=tmp_path / "data", checkpoint_every=4, **OPTIONS)
    path = cache_file(tmp_path / "work", "mobilenet_v1_025", 64, "none")
    assert not path.exists() and len(cache.checkpoint_parts(path)) == 2
    half_written = cache.parts_dir(path) / ".000003.npz.x1.tmp.npz"   # a kill during a write
    half_written.write_bytes(b"half a part")
    keys, _ = cache.read_cache(path)
    assert sorted(keys["path"]) == sorted(names)[:8]      # two batches of 4 checkpointed
    monkeypatch.setattr(compute, "embed_views", real_embed)
    resumed = embed_files(names, tmp_path / "work", root=tmp_path / "data", **OPTIONS)
    assert (resumed.computed, resumed.reused) == (2, 8)
    np.testing.assert_allclose(resumed.vectors, clean.vectors, rtol=1e-5, atol=1e-6)
    assert path.exists() and not cache.parts_dir(path).exists()   # parts folded in, leftovers gone
