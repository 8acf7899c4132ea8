"""`curate scan` on a generated tree with every awkward case, and on the shared real datasets."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from curation.config import ConfigError, DatasetConfig, resolve_dataset
from curation.manifest import SCAN_COLUMNS, WorkdirBusy, read_manifest, workdir_lock
from curation.scan.step import detect_layout, list_files, scan
from tests.test_images import huge_png


@pytest.fixture
def messy_tree(tmp_path, make_image):
    """Class folders with good images, bad files, odd names, links and hidden files."""
    root = tmp_path / "photos"
    make_image(root / "sedan" / "a.jpg", seed=1)
    make_image(root / "sedan" / "nested" / "deeper" / "b.jpg", seed=2)
    make_image(root / "sedan" / "weird name #1 (copy) é.jpg", seed=3)
    make_image(root / "sedan" / "cmyk.jpg", seed=4, mode="CMYK")
    make_image(root / "sedan" / "palette.png", seed=5, mode="P")
    make_image(root / "suv" / "png_named.jpg", seed=6, fmt="PNG")
    exif = Image.Exif()
    exif[0x0112] = 8
    make_image(root / "suv" / "rotated.jpg", seed=7, size=(200, 100), exif=exif.tobytes())
    Image.new("I;16", (30, 20)).save(root / "suv" / "deep.png")
    (root / "suv" / "empty.jpg").write_bytes(b"")
    (root / "suv" / "notes.txt").write_text("seller notes, not an image")
    truncated = make_image(root / "suv" / "truncated.jpg", seed=8, size=(400, 300), quality=95)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    huge_png(root / "suv" / "bomb.png")
    make_image(root / "suv" / ".hidden.jpg", seed=9)
    make_image(root / ".thumbs" / "x.jpg", seed=10)
    (root / "pickup").mkdir()
    outside = make_image(tmp_path / "outside" / "o.jpg", seed=11)
    os.symlink(outside, root / "suv" / "link_out.jpg")
    os.symlink(root / "sedan", root / "sedan" / "nested" / "loop")
    make_image(root / "loose.jpg", seed=12)
    return root


def test_messy_tree_manifest(messy_tree, tmp_path):
    config = DatasetConfig(name="messy", root=messy_tree)
    summary = scan(config, tmp_path / "work", workers=1, quiet=True)
    manifest = read_manifest(tmp_path / "work").set_index("path")
    assert list(read_manifest(tmp_path / "work").columns) == SCAN_COLUMNS

    readable = set(manifest.index[manifest["readable"]])
    assert readable == {"sedan/a.jpg", "sedan/nested/deeper/b.jpg", "sedan/weird name #1 (copy) é.jpg",
                        "sedan/cmyk.jpg", "sedan/palette.png", "suv/png_named.jpg",
                        "suv/rotated.jpg", "suv/deep.png", "loose.jpg"}
    assert manifest.loc["sedan/nested/deeper/b.jpg", "label"] == "sedan"
    assert pd.isna(manifest.loc["loose.jpg", "label"])
    assert manifest.loc["suv/png_named.jpg", "format"] == "PNG"
    assert manifest.loc["sedan/cmyk.jpg", "mode"] == "CMYK"
    assert (manifest.loc["suv/rotated.jpg", "width"], manifest.loc["suv/rotated.jpg", "height"]) == (100, 200)
    reasons = {p: e.split(":")[0] for p, e in manifest["error"].dropna().items()}
    assert reasons == {"suv/empty.jpg": "empty file", "suv/notes.txt": "not an image",
                       "suv/truncated.jpg": "truncated", "suv/bomb.png": "too many pixels"}
    assert not any(".hidden" in p or ".thumbs" in p for p in manifest.index)
    assert "suv/link_out.jpg" not in manifest.index
    assert summary["unreadable_by_reason"]["symlink points outside the dataset root"] == ["suv/link_out.jpg"]
    assert any("loop" in reason for reason in summary["unreadable_by_reason"])
    assert summary["empty_class_folders"] == ["pickup"]
    assert summary["classes"] == {"sedan": 5, "suv": 3}
    assert summary["unlabelled"] == 1
    assert manifest.loc["sedan/a.jpg", "sha256"] == __import__("hashlib").sha256(
        (messy_tree / "sedan/a.jpg").read_bytes()).hexdigest()


def test_rescan_reuses_unchanged_rows_and_rechecks_changed(class_tree, tmp_path, make_image):
    config = DatasetConfig(name="tree", root=class_tree)
    first = scan(config, tmp_path / "work", workers=1, quiet=True)
    assert (first["reused"], first["checked"]) == (0, 12)
    make_image(class_tree / "alpha" / "new.jpg", seed=999)
    changed = class_tree / "beta" / "0.jpg"
    changed.write_bytes(b"")
    second = scan(config, tmp_path / "work", workers=1, quiet=True)
    assert (second["reused"], second["checked"]) == (11, 2)
    manifest = read_manifest(tmp_path / "work").set_index("path")
    assert not manifest.loc["beta/0.jpg", "readable"]
    assert manifest.loc["alpha/new.jpg", "readable"]


def test_later_columns_survive_rescan_for_unchanged_files(class_tree, tmp_path):
    from curation.manifest import write_manifest
    config = DatasetConfig(name="tree", root=class_tree)
    scan(config, tmp_path / "work", workers=1, quiet=True)
    manifest = read_manifest(tmp_path / "work")
    manifest["split"] = "train"
    write_manifest(manifest, tmp_path / "work")
    (class_tree / "gamma" / "3.jpg").write_bytes(b"changed")
    scan(config, tmp_path / "work", workers=1, quiet=True)
    rescanned = read_manifest(tmp_path / "work").set_index("path")
    assert rescanned.loc["alpha/0.jpg", "split"] == "train"
    assert pd.isna(rescanned.loc["gamma/3.jpg", "split"])


def test_process_pool_gives_the_same_rows(class_tree, tmp_path):
    config = DatasetConfig(name="tree", root=class_tree)
    scan(config, tmp_path / "one", workers=1, quiet=True)
    scan(config, tmp_path / "two", workers=2, quiet=True)
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two"))


def test_source_tree_is_untouched(messy_tree, tmp_path):
    def snapshot():
        return sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in messy_tree.rglob("*")
                      if p.is_file() and not p.is_symlink())
    before = snapshot()
    scan(DatasetConfig(name="messy", root=messy_tree), tmp_path / "work", workers=1, quiet=True)
    assert snapshot() == before


def test_workdir_inside_root_is_refused(class_tree):
    with pytest.raises(ConfigError, match="inside the dataset root"):
        scan(DatasetConfig(name="tree", root=class_tree), class_tree / ".curate", quiet=True)


def test_concurrent_run_gets_a_clear_error(class_tree, tmp_path):
    with workdir_lock(tmp_path / "work"):
        with pytest.raises(WorkdirBusy, match="in use"):
            scan(DatasetConfig(name="tree", root=class_tree), tmp_path / "work", quiet=True)


def test_split_layout_is_detected(tmp_path, make_image):
    for split in ("train", "validation", "test"):
        make_image(tmp_path / "d" / split / "swift" / f"{split}.jpg", seed=len(split))
    assert detect_layout(tmp_path / "d") == "split_class_folders"
    listing = list_files(tmp_path / "d")
    assert {(f.label, f.given_split) for f in listing.files} == {
        ("swift", "train"), ("swift", "validation"), ("swift", "test")}


def test_class_mismatch_names_the_key(class_tree, tmp_path):
    config = DatasetConfig(name="tree", root=class_tree, classes=("alpha", "beta", "delta"))
    with pytest.raises(ConfigError, match="key 'classes'.*missing \\['delta'\\].*unexpected \\['gamma'\\]"):
        scan(config, tmp_path / "work", quiet=True)


@pytest.mark.real_data
def test_real_stanford_cars_25(curate_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_DATA", str(curate_data))
    summary = scan(resolve_dataset("stanford-cars-25"), tmp_path / "w", quiet=True)
    assert summary["readable"] == 1102 and summary["unreadable"] == 0
    assert len(summary["classes"]) == 25


@pytest.mark.real_data
def test_real_swift_wagonr_given_splits(curate_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_DATA", str(curate_data))
    summary = scan(resolve_dataset("swift-wagonr"), tmp_path / "w", quiet=True)
    assert summary["readable"] == 300
    assert summary["classes"] == {"swift": 149, "wagonr": 151}
    manifest = read_manifest(tmp_path / "w")
    counts = manifest.groupby(["given_split", "label"]).size().to_dict()
    assert counts == {("train", "swift"): 104, ("train", "wagonr"): 105,
                      ("validation", "swift"): 22, ("validation", "wagonr"): 22,
                      ("test", "swift"): 23, ("test", "wagonr"): 24}


@pytest.mark.real_data
def test_real_indian_cars_7(curate_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_DATA", str(curate_data))
    summary = scan(resolve_dataset("indian-cars-7"), tmp_path / "w", quiet=True)
    assert summary["files"] == 4165 and len(summary["classes"]) == 7
    assert set(summary["given_splits"]) == {"train", "test"}
    assert summary["readable"] == 4165
    manifest = read_manifest(tmp_path / "w")
    named_jpg = manifest[manifest["path"].str.lower().str.endswith(".jpg")]
    assert (named_jpg["format"] == "PNG").sum() >= 1, "the shared set has PNGs named .jpg"


def test_non_utf8_file_name_is_reported_not_fatal(class_tree, tmp_path):
    bad = os.path.join(os.fsencode(class_tree / "alpha"), b"bad\xffname.jpg")
    shutil.copy(class_tree / "alpha" / "0.jpg", bad)
    summary = scan(DatasetConfig(name="tree", root=class_tree), tmp_path / "work", workers=1, quiet=True)
    assert summary["readable"] == 12
    assert "file name is not valid UTF-8" in summary["unreadable_by_reason"]
