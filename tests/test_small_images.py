"""Small photos (120 px wide, smaller than swift-wagonr-4000's 272 px ones) through every step
that resizes: dedupe's reduced-scale JPEG decode, the embedding resize, the training pixel cache."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from PIL import Image

from curation.config import DatasetConfig
from curation.dedupe.hashing import DECODE_MIN_SIDE, hash_file
from curation.dedupe.step import dedupe
from curation.embed.compute import EmbedSettings, embed_manifest
from curation.images import load_array, load_gray
from curation.manifest import read_manifest
from curation.scan.step import scan
from tests.conftest import synthetic_photo
from training.data import cache_paths, load_pixels

SMALL = (120, 90)


def small_folder(root, make_image) -> list[str]:
    """Six distinct 120x90 JPEGs in two classes; returns their relative paths."""
    names = [f"{c}/{i}.jpg" for c in ("swift", "wagonr") for i in range(3)]
    for seed, name in enumerate(names):
        make_image(root / name, seed=seed, size=SMALL, quality=90)
    return names


def rows_for(root, names) -> pd.DataFrame:
    return pd.DataFrame([{"path": n, "label": n.split("/")[0], "bytes": os.stat(root / n).st_size,
                          "mtime": os.stat(root / n).st_mtime} for n in names])


def test_small_jpegs_decode_above_the_hash_grid_and_hash_without_error(tmp_path, make_image):
    tiny = make_image(tmp_path / "tiny.jpg", seed=3, size=(40, 30))
    for path in (make_image(tmp_path / "small.jpg", size=SMALL), tiny):
        gray = load_gray(path, min_side=DECODE_MIN_SIDE)
        width, height = Image.open(path).size
        assert min(gray.shape) >= min(DECODE_MIN_SIDE, height, width)   # never below the 32 grid
        assert "error" not in hash_file((str(path), ("phash", "dhash")))


def test_dedupe_groups_a_shrunk_recompressed_copy_of_a_small_photo(tmp_path, make_image):
    root = tmp_path / "data"
    small_folder(root, make_image)
    copy = synthetic_photo(0, SMALL).resize((96, 72), Image.Resampling.BILINEAR)
    copy.save(root / "swift" / "copy.jpg", quality=60)
    config = DatasetConfig(name="small", root=root, layout="class_folders")
    scan(config, tmp_path / "work", workers=1, quiet=True)
    summary = dedupe(config, tmp_path / "work", workers=1, quiet=True)
    manifest = read_manifest(tmp_path / "work")
    grouped = sorted(manifest.loc[manifest["dup_group"].notna(), "path"])
    assert summary["hash_failed"] == {}
    assert grouped == ["swift/0.jpg", "swift/copy.jpg"]     # the copy found, no distinct photo joined


def test_embedding_resize_enlarges_small_photos_to_the_backbone_size(tmp_path, make_image):
    root = tmp_path / "data"
    names = small_folder(root, make_image)
    expected = np.asarray(Image.open(root / names[0]).convert("RGB").resize(
        (160, 160), Image.Resampling.BILINEAR)).astype(int)
    png = tmp_path / "small.png"
    Image.open(root / names[0]).save(png)
    for source in (root / names[0], png):          # the JPEG fast path, and PIL's full decode
        array = load_array(source, 160)
        assert array.shape == (160, 160, 3)
        assert np.abs(array.astype(int) - expected).mean() < 1.5   # whole frame, full scale
    settings = EmbedSettings(backbone="mobilenet_v1_025", weights="none", image_size=160,
                             batch_size=4, workers=1)
    run = embed_manifest(rows_for(root, names), root, tmp_path / "work", settings=settings,
                         quiet=True)
    assert (run.computed, run.failed) == (6, {})
    assert run.vectors.shape == (6, 256) and np.isfinite(run.vectors).all()


def test_training_cache_holds_small_photos_at_each_size_and_reuses_them(tmp_path, make_image):
    root = tmp_path / "data"
    names = small_folder(root, make_image)
    rows = rows_for(root, names).assign(split="train")
    cache = tmp_path / "cache"
    for size in (128, 224):
        pixels, located, failures = load_pixels(rows, root, size, cache, workers=1, quiet=True)
        assert failures == [] and pixels.shape == (6, size, size, 3)
        first = located.set_index("path").loc[names[0], "slot"]
        np.testing.assert_array_equal(pixels[first], load_array(root / names[0], size))
    stamp = os.stat(cache_paths(cache, 128)[0]).st_mtime_ns
    again, located, _ = load_pixels(rows, root, 128, cache, workers=1, quiet=True)
    assert os.stat(cache_paths(cache, 128)[0]).st_mtime_ns == stamp    # nothing decoded again
    assert len(located) == 6 and again.shape == (6, 128, 128, 3)
