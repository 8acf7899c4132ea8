"""`curate dedupe` on generated photos with planted copies, the keeper rule, the cache, leaks."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance, ImageOps

from cli import main
from curation.config import DatasetConfig, resolve_dataset
from curation.dedupe.step import dedupe
from curation.manifest import read_manifest
from curation.scan.step import scan
from tests.conftest import synthetic_photo

COPIES = {  # planted copy -> its original
    "alpha/resized.jpg": "alpha/0.jpg", "alpha/mirrored.jpg": "alpha/1.jpg",
    "beta/brighter.jpg": "beta/0.jpg", "beta/cropped.jpg": "beta/1.jpg",
    "gamma/recompressed.jpg": "gamma/0.jpg", "gamma/same-bytes.jpg": "beta/2.jpg",
    "gamma/same-pixels.png": "gamma/1.png",
}


def photo(seed: int) -> Image.Image:
    return synthetic_photo(seed, (320, 240))


@pytest.fixture
def planted(tmp_path) -> Path:
    """3 classes x 4 distinct photos, plus one copy per kind of edit (see COPIES)."""
    root = tmp_path / "data"
    originals = {}
    for c, label in enumerate(["alpha", "beta", "gamma"]):
        (root / label).mkdir(parents=True)
        for i in range(4):
            name = f"{label}/{i}.png" if (label, i) == ("gamma", 1) else f"{label}/{i}.jpg"
            originals[name] = photo(100 * c + i)
            originals[name].save(root / name, quality=95)
    edits = {
        "alpha/resized.jpg": lambda im: im.resize((200, 150)),
        "alpha/mirrored.jpg": ImageOps.mirror,
        "beta/brighter.jpg": lambda im: ImageEnhance.Brightness(im).enhance(1.25),
        "beta/cropped.jpg": lambda im: im.crop((12, 8, 307, 229)),
    }
    for copy, edit in edits.items():
        edit(originals[COPIES[copy]]).save(root / copy, quality=90)
    originals["gamma/0.jpg"].save(root / "gamma/recompressed.jpg", quality=40)
    shutil.copyfile(root / "beta/2.jpg", root / "gamma/same-bytes.jpg")
    Image.open(root / "gamma/1.png").save(root / "gamma/same-pixels.png", compress_level=1)
    return root


def run(root: Path, work: Path, **options) -> tuple[dict, pd.DataFrame]:
    config = resolve_dataset(str(root))
    scan(config, work, workers=1, quiet=True)
    summary = dedupe(config, work, workers=1, quiet=True, **options)
    return summary, read_manifest(work).set_index("path")


def test_planted_copies_are_grouped_and_distinct_photos_are_not(planted, tmp_path):
    summary, m = run(planted, tmp_path / "work")
    for copy, original in COPIES.items():
        assert pd.notna(m.at[copy, "dup_group"]), copy
        assert m.at[copy, "dup_group"] == m.at[original, "dup_group"], copy
    assert summary["groups"] == len(COPIES)
    assert m["dup_group"].notna().sum() == 2 * len(COPIES)   # every other photo stays unique
    reasons = {copy: m.at[copy, "dup_reason"] for copy in COPIES if not m.at[copy, "dup_keeper"]}
    assert reasons["gamma/same-bytes.jpg"] == "same bytes"
    assert m.at["alpha/mirrored.jpg", "dup_reason"] == "mirrored"
    pair = m.loc[["gamma/same-pixels.png", "gamma/1.png"], "dup_reason"].dropna().tolist()
    assert pair == ["same pixels"]
    assert summary["label_conflicts"]["groups"] == 1           # beta/2 copied into gamma


def test_manifest_columns_csv_and_sheet(planted, tmp_path):
    work = tmp_path / "work"
    summary, m = run(planted, work)
    assert str(m["dup_group"].dtype) == "Int64" and str(m["dup_distance"].dtype) == "Int64"
    assert not m["dup_keeper"].all()                      # copies are not keepers
    unique = m[m["dup_group"].isna()]
    assert unique["dup_keeper"].all() and unique["dup_of"].isna().all()
    copies = m[m["dup_group"].notna() & ~m["dup_keeper"].astype(bool)]
    assert (copies["dup_of"].map(lambda p: m.at[p, "dup_keeper"])).all()
    assert m["phash"].str.fullmatch("[0-9a-f]{16}").all()
    table = pd.read_csv(work / "dupes.csv")
    assert list(table.columns[:5]) == ["group", "path", "keeper", "distance", "reason"]
    assert len(table) == 2 * len(COPIES) and table.groupby("group")["keeper"].sum().eq(1).all()
    assert Image.open(work / "dupes.png").size[0] > 100
    record = json.loads((work / "runs" / "dedupe.json").read_text())
    assert record["settings"]["thresholds"] == {"phash": 8, "dhash": 8}


def test_no_mirror_and_threshold_options(planted, tmp_path):
    _, m = run(planted, tmp_path / "w1", mirror=False)
    assert pd.isna(m.at["alpha/mirrored.jpg", "dup_group"])
    _, m = run(planted, tmp_path / "w2", kinds="phash", threshold=0)
    assert pd.isna(m.at["beta/cropped.jpg", "dup_group"])
    assert m.at["gamma/same-bytes.jpg", "dup_group"] == m.at["beta/2.jpg", "dup_group"]


def test_rerun_hashes_only_new_or_changed_files(planted, tmp_path):
    work = tmp_path / "work"
    first, _ = run(planted, work)
    assert first["hashed"] == 18 and first["reused"] == 1     # the byte copy is hashed once
    again, _ = run(planted, work)
    assert again["hashed"] == 0 and again["reused"] == 19
    photo(999).save(planted / "alpha" / "new.jpg")
    path = planted / "beta" / "3.jpg"
    photo(998).save(path)
    os.utime(path, (1, 1))
    third, m = run(planted, work)
    assert third["hashed"] == 2 and third["reused"] == 18
    assert pd.isna(m.at["alpha/new.jpg", "dup_group"])
    record = json.loads((work / "runs" / "dedupe.json").read_text())
    record["settings"]["hash_method"] = "an older way of hashing"
    (work / "runs" / "dedupe.json").write_text(json.dumps(record))
    fourth, _ = run(planted, work)                 # hashes made another way are never mixed in
    assert fourth["hashed"] == 19 and fourth["reused"] == 1


def test_cross_split_duplicates_are_reported(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / split / "car").mkdir(parents=True)
    for i in range(3):
        photo(i).save(root / "train" / "car" / f"{i}.jpg", quality=95)
    photo(0).resize((240, 180)).save(root / "test" / "car" / "copy.jpg", quality=80)
    photo(7).save(root / "test" / "car" / "own.jpg", quality=95)
    summary, m = run(root, tmp_path / "work")
    leaks = summary["cross_split"]
    assert leaks["leaking_groups"] == 1 and leaks["pairs"] == {"train/test": 1}
    assert m.at["train/car/0.jpg", "dup_keeper"] and m.at["test/car/copy.jpg", "dup_of"] == \
        "train/car/0.jpg"


def test_cli_json_and_clear_errors(planted, tmp_path):
    work = tmp_path / "work"
    runner = CliRunner()
    assert runner.invoke(main, ["scan", str(planted), "--workdir", str(work), "-q"]).exit_code == 0
    result = runner.invoke(main, ["dedupe", str(planted), "--workdir", str(work), "--json",
                                  "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["groups"] == len(COPIES)
    bad = runner.invoke(main, ["dedupe", str(planted), "--workdir", str(work), "--hash", "md5"])
    assert bad.exit_code != 0 and "unknown hash md5" in bad.output
    missing = runner.invoke(main, ["dedupe", str(planted), "--workdir", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "curate scan" in missing.output


def test_unhashable_rows_do_not_stop_the_run(planted, tmp_path):
    work = tmp_path / "work"
    config = DatasetConfig(name="planted", root=planted)
    scan(config, work, workers=1, quiet=True)
    (planted / "alpha" / "3.jpg").write_bytes(b"")        # broken after the scan
    summary = dedupe(config, work, workers=1, quiet=True)
    assert summary["hash_failed"] == {"empty file": ["alpha/3.jpg"]}
    assert summary["changed_since_scan"] == 1 and summary["groups"] == len(COPIES)


def test_sheet_has_a_legend_marks_mixed_labels_and_counts_groups_not_shown(planted, tmp_path,
                                                                         monkeypatch):
    from PIL import ImageDraw

    from curation.dedupe.step import SHEET_LEGEND, describe

    drawn = []
    text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, words, *a, **k: drawn.append(words) or text(
                            self, xy, words, *a, **k))
    summary, _ = run(planted, tmp_path / "work", sheet_groups=2)
    assert all(line in drawn for line in SHEET_LEGEND)
    assert f"{len(COPIES) - 2} more groups not shown ({2 * (len(COPIES) - 2)} images): " \
           f"see dupes.csv" in drawn
    drawn.clear()
    summary, _ = run(planted, tmp_path / "all", sheet_groups=len(COPIES))
    assert [t for t in drawn if "MIXED LABELS: beta, gamma" in t]   # beta/2 copied into gamma
    assert not [t for t in drawn if "more groups not shown" in t]
    text_summary = describe(summary)
    assert "1 groups mix labels (members filed under different classes" in text_summary
    assert "same photo under two classes" not in text_summary
