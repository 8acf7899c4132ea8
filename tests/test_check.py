"""`curate check`'s core: the wrong-model rule, verdict precedence, the catalogue index, uploads
decoded from bytes, and the claims file."""
from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation.dedupe.evaluation import transform
from curation.dedupe.hashing import DECODE_MIN_SIDE, gray_hashes, hash_columns
from curation.images import load_gray
from curation.manifest import read_manifest, write_manifest
from training.bad_inputs import bomb_png
from training.catalogue import INDEX_NAME, IndexMissing, build_catalogue, load_catalogue
from training.check import (MAX_FALSE_ALARM, assign_verdicts, calibrate_wrong_model,
                            read_upload, swapped_claims, wrong_model_flags)
from training.claims import ClaimsError, check_unknown_labels, read_claims
from tests.conftest import synthetic_photo

CALIBRATION = {"distance_threshold": 0.5, "min_confidence": 0.6}


def _val_probs(n: int, classes: int, rng, accuracy: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a plausible classifier: right and confident about `accuracy` of the
    time, else leaning (less surely) to a neighbouring class."""
    y = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < accuracy
    boost = np.where(right, rng.uniform(3, 7, n), rng.uniform(0.5, 2.5, n))
    logits[np.arange(n), np.where(right, y, (y + 1) % classes)] += boost
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), y


@pytest.mark.parametrize("classes", [2, 25])
def test_wrong_model_rule_keeps_false_alarms_on_true_val_claims_under_its_budget(classes):
    rng = np.random.default_rng(classes)
    probs, y = _val_probs(400, classes, rng)
    rule = calibrate_wrong_model(probs, y)
    assert rule["score"] in rule["candidates"]
    assert wrong_model_flags(probs, y, rule).mean() <= MAX_FALSE_ALARM
    assert rule["val_false_alarm"] <= MAX_FALSE_ALARM
    rows, claims = swapped_claims(y, classes)
    assert (claims != y[rows]).all() and len(rows) == len(y) * (classes - 1)
    assert rule["val_swap_recall"] >= 0.6      # flagging 1 % at random would catch 1 %
    fresh, fresh_y = _val_probs(2000, classes, np.random.default_rng(99))
    assert wrong_model_flags(fresh, fresh_y, rule).mean() < 0.05    # holds on new photos too


def test_wrong_model_needs_another_class_on_top():
    probs = np.array([[0.4, 0.3, 0.3], [0.1, 0.8, 0.1]])
    rule = {"score": "claimed_probability", "threshold": 0.5}
    # claimed class 0 has only 0.4 (score 0.6 > 0.5) but is still the most probable: not wrong
    assert wrong_model_flags(probs, np.array([0, 0]), rule).tolist() == [False, True]


def test_verdict_precedence():
    probs = np.array([[0.9, 0.1]] * 5 + [[0.55, 0.45]])
    distances = np.array([0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    claimed = np.array([1, 1, 1, 0, 0, 0])
    duplicate = np.array([True, True, False, False, True, False])
    rule = {"score": "claimed_probability", "threshold": 0.5}
    assert assign_verdicts(probs, distances, claimed, duplicate, CALIBRATION, rule) == [
        "not_a_car", "duplicate", "wrong_model", "ok", "duplicate", "unsure"]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_uploads_decode_from_bytes_and_bad_bytes_get_a_reason():
    data = _jpeg(synthetic_photo(1, (200, 150)))
    upload = read_upload("a.jpg", data, 32, ("phash", "dhash"))
    assert upload.error is None and upload.pixels.shape == (32, 32, 3)
    assert set(upload.hashes) == set(hash_columns(("phash", "dhash"))) and len(upload.sha256) == 64
    reasons = {name: read_upload(name, bad, 32).error for name, bad in [
        ("empty", b""), ("text", b"hello " * 50), ("truncated", data[:len(data) // 3]),
        ("bomb", bomb_png())]}
    assert reasons["empty"].startswith("empty file")
    assert reasons["text"].startswith("not an image")
    assert reasons["truncated"].startswith(("truncated", "corrupt"))
    assert reasons["bomb"].startswith("too many pixels")


def _catalogue_tree(tmp_path, count: int = 8) -> tuple[pd.DataFrame, list[Image.Image]]:
    """A manifest of `count` distinct generated photos with dedupe's hash columns."""
    images, rows = [], []
    for i in range(count):
        image = synthetic_photo(100 + i, (240, 180))
        path = tmp_path / f"{i}.jpg"
        image.save(path, quality=92)
        images.append(image)
        rows.append({"path": f"{i}.jpg", "label": "a" if i % 2 else "b",
                     "sha256": __import__("hashlib").sha256(path.read_bytes()).hexdigest(),
                     **gray_hashes(load_gray(path, min_side=DECODE_MIN_SIDE), ("phash", "dhash"))})
    return pd.DataFrame(rows), images


def test_catalogue_finds_edited_copies_and_not_other_photos(tmp_path):
    manifest, images = _catalogue_tree(tmp_path)
    catalogue = build_catalogue(manifest, "cars")
    rng = np.random.default_rng(0)
    edits = ["resize", "jpeg", "brightness", "text", "mirror"]
    queries, digests, expected = [], [], []
    for i, edit in enumerate(edits):
        upload = read_upload(f"q{i}", _jpeg(transform(images[i], edit, rng), 60), 32,
                             catalogue.kinds)
        queries.append(upload.hashes)
        digests.append(upload.sha256)
        expected.append(f"{i}.jpg")
    same = (tmp_path / "5.jpg").read_bytes()
    fresh = read_upload("new", _jpeg(synthetic_photo(999, (240, 180))), 32, catalogue.kinds)
    queries += [read_upload("same", same, 32, catalogue.kinds).hashes, fresh.hashes]
    digests += [__import__("hashlib").sha256(same).hexdigest(), fresh.sha256]
    found = catalogue.match(queries, digests)
    assert [f["path"] if f else None for f in found] == expected + ["5.jpg", None]
    assert found[-2]["how"] == "same bytes" and found[4]["how"] == "mirrored"
    assert found[0]["label"] == "b"


def test_uneven_crops_are_found_by_the_cut_variants(tmp_path):
    manifest, images = _catalogue_tree(tmp_path)
    catalogue = build_catalogue(manifest, "cars")
    found, plain = [], []
    for i, image in enumerate(images):
        width, height = image.size
        cuts = [(0.02, 0.05, 0.05, 0.02), (0.05, 0.02, 0.02, 0.05)][i % 2]   # left top right bottom
        cropped = image.crop((round(width * cuts[0]), round(height * cuts[1]),
                              round(width * (1 - cuts[2])), round(height * (1 - cuts[3]))))
        upload = read_upload(f"c{i}", _jpeg(cropped), 32, catalogue.kinds)
        assert len(upload.crops) == 15
        found.append(catalogue.match([upload.hashes], [upload.sha256], [upload.crops])[0])
        plain.append(catalogue.match([upload.hashes], [upload.sha256])[0])
    assert [f["path"] if f else None for f in found] == [f"{i}.jpg" for i in range(len(images))]
    assert sum(p is None for p in plain) >= 1         # some need the variants
    fresh = read_upload("new", _jpeg(synthetic_photo(999, (240, 180))), 32, catalogue.kinds)
    assert catalogue.match([fresh.hashes], [fresh.sha256], [fresh.crops]) == [None]


def test_catalogue_index_is_saved_and_rebuilt_when_the_manifest_changes(tmp_path):
    manifest, _ = _catalogue_tree(tmp_path, count=4)
    workdir = tmp_path / "work"
    write_manifest(manifest, workdir)
    first = load_catalogue(workdir, "cars")
    saved = workdir / INDEX_NAME
    assert saved.is_file() and len(first) == 4
    stamp = saved.stat().st_mtime_ns
    assert len(load_catalogue(workdir)) == 4 and saved.stat().st_mtime_ns == stamp   # reused
    write_manifest(read_manifest(workdir).iloc[:2], workdir)
    os.utime(workdir / "manifest.parquet", ns=(stamp + 10**9, stamp + 10**9))
    assert len(load_catalogue(workdir)) == 2
    write_manifest(manifest[["path", "label"]], workdir)
    with pytest.raises(IndexMissing, match="curate dedupe"):
        load_catalogue(workdir)


def test_claims_come_from_a_csv_or_one_label_and_unknown_labels_are_refused(tmp_path):
    table = tmp_path / "claims.csv"
    table.write_text("path,claimed_label\nphotos/a.jpg,swift\n/abs/b.jpg, wagonr\n")
    pairs = read_claims(["c.jpg"], "swift", table)
    assert [(str(p), c) for p, c in pairs] == [
        ("c.jpg", "swift"), (str(tmp_path / "photos/a.jpg"), "swift"), ("/abs/b.jpg", "wagonr")]
    with pytest.raises(ClaimsError, match="--claimed"):
        read_claims(["c.jpg"], None, None)
    (tmp_path / "bad.csv").write_text("file,label\nx.jpg,swift\n")
    with pytest.raises(ClaimsError, match="claimed_label"):
        read_claims([], None, tmp_path / "bad.csv")
    with pytest.raises(ClaimsError, match="valid labels: swift, wagonr"):
        check_unknown_labels(pairs + [(tmp_path / "d.jpg", "alto")], ["swift", "wagonr"])
