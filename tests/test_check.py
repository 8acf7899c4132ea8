"""`curate check`'s core: the wrong-model rule, verdict precedence, the catalogue index, uploads
decoded from bytes, and the claims file."""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps

from curation.dedupe.evaluation import transform
from curation.dedupe.hashing import DECODE_MIN_SIDE, gray_hashes, hash_columns
from curation.images import load_gray
from curation.manifest import read_manifest, write_manifest
from training.bad_inputs import bomb_png
from training import lookalike
from training.catalogue import INDEX_NAME, IndexMissing, build_catalogue, load_catalogue
from training.check import (MAX_FALSE_ALARM, assign_verdicts, calibrate_wrong_model,
                            read_upload, swapped_claims, wrong_model_flags)
from training.claims import ClaimsError, check_unknown_labels, read_claims
from training.lookalike import MAX_COLOUR_SHIFT, colour_shift, picture
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
        image.save(tmp_path / f"{i}.jpg", quality=92)
        images.append(image)
        rows.append(_manifest_row(tmp_path, f"{i}.jpg", "a" if i % 2 else "b"))
    return pd.DataFrame(rows), images


def _manifest_row(root, path: str, label: str) -> dict:
    """What scan and dedupe leave in the manifest for one photo: path, label, sha256, hashes."""
    return {"path": path, "label": label,
            "sha256": hashlib.sha256((root / path).read_bytes()).hexdigest(),
            **gray_hashes(load_gray(root / path, min_side=DECODE_MIN_SIDE), ("phash", "dhash"))}


def _cut(image: Image.Image, cuts: tuple[float, float, float, float]) -> Image.Image:
    """The image less these shares of its left, top, right and bottom."""
    width, height = image.size
    return image.crop((round(width * cuts[0]), round(height * cuts[1]),
                       round(width * (1 - cuts[2])), round(height * (1 - cuts[3]))))


def _reposted(image: Image.Image) -> bytes:
    """A re-posted copy: cut unevenly, mirrored, halved, saved as a poor JPEG."""
    cropped = _cut(image, (0.07, 0.02, 0.02, 0.07))
    small = ImageOps.mirror(cropped).resize((cropped.width // 2, cropped.height // 2),
                                            Image.Resampling.LANCZOS)
    return _jpeg(small, 60)


def _lookup(catalogue, data: bytes) -> dict | None:
    upload = read_upload("upload", data, 224, catalogue.kinds)
    return catalogue.match([upload.hashes], [upload.sha256], [upload.crops], [upload.picture])[0]


def test_thumbnails_find_copies_the_hashes_miss_and_nothing_else(tmp_path):
    manifest, images = _catalogue_tree(tmp_path)
    hashes_only, with_thumbs = build_catalogue(manifest, "cars"), build_catalogue(
        manifest, "cars", tmp_path)
    assert with_thumbs.thumbs.shape == (8, 64, 64) and with_thumbs.thumbs.dtype == np.uint8
    before = [_lookup(hashes_only, _reposted(image)) for image in images]
    after = [_lookup(with_thumbs, _reposted(image)) for image in images]
    assert all(a is not None and a["path"] == b["path"] for a, b in zip(after, before) if b)
    aligned = [i for i, hit in enumerate(after) if hit and hit["how"].startswith("aligned")]
    assert len(aligned) >= 5 and all(after[i]["path"] == f"{i}.jpg" for i in aligned)
    assert all(before[i] is None for i in aligned)      # only what the hash rules missed
    for seed in (999, 1000, 1001):
        assert _lookup(with_thumbs, _jpeg(synthetic_photo(seed, (240, 180)))) is None


def _repainted(image: Image.Image) -> Image.Image:
    """The same picture with every hue turned a third of the way round (another paint)."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 85) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def test_colour_signature_keeps_brightness_and_tells_another_paint(tmp_path):
    manifest, images = _catalogue_tree(tmp_path)
    catalogue = build_catalogue(manifest, "cars", tmp_path)
    for k, image in enumerate(images):
        own = catalogue.signatures[k]
        darker = picture(np.asarray(ImageEnhance.Brightness(image).enhance(0.7)))[1]
        assert colour_shift(darker, own) < MAX_COLOUR_SHIFT / 2
        assert colour_shift(picture(np.asarray(_repainted(image)))[1], own) > MAX_COLOUR_SHIFT
    found = [_lookup(catalogue, _reposted(image)) for image in images]
    repainted = [_lookup(catalogue, _reposted(_repainted(image))) for image in images]
    aligned = [i for i, hit in enumerate(found) if hit and hit["how"].startswith("aligned")]
    assert aligned and all(repainted[i] is None for i in aligned)


def test_real_photo_found_when_reposted_and_its_repainted_render_is_not(curate_data):
    """swift-wagonr holds one Swift render in red and in grey: a cropped copy of the grey one
    aligns with the red one as well as an edited copy does; only the colours tell them apart."""
    root = curate_data / "swift-wagonr"
    red, grey = "train/swift/maruti_suzuki_swift_022.jpg", "train/swift/maruti_suzuki_swift_264.jpg"
    others = sorted(p.relative_to(root).as_posix() for p in (root / "train/wagonr").glob("*.jpg"))
    rows = [_manifest_row(root, p, "swift" if "swift" in p else "wagonr")
            for p in [red, *others[:12]]]
    catalogue = build_catalogue(pd.DataFrame(rows), "swift-wagonr", root)
    found = _lookup(catalogue, _reposted(Image.open(root / red).convert("RGB")))
    assert found is not None and found["path"] == red and found["how"].startswith("aligned")
    grey_copy = _jpeg(_cut(Image.open(root / grey).convert("RGB"), (0.05, 0.03, 0.03, 0.05)))
    assert _lookup(catalogue, (root / grey).read_bytes()) is None
    assert _lookup(catalogue, grey_copy) is None
    thumb, signature = read_upload("grey", grey_copy, 224, catalogue.kinds).picture
    assert colour_shift(signature, catalogue.signatures[0]) > MAX_COLOUR_SHIFT
    shapes_only = lookalike.confirm([thumb], [catalogue.signatures[0]], catalogue.thumbs,
                                    catalogue.signatures, np.array([0]), np.array([0]))
    assert shapes_only[0] >= lookalike.MIN_ALIGNED     # without the colours it would match


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
    digests += [hashlib.sha256(same).hexdigest(), fresh.sha256]
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
    assert saved.is_file() and len(first) == 4 and first.thumbs is None
    with_thumbs = load_catalogue(workdir, "cars", root=tmp_path)     # rebuilt: a root now
    assert with_thumbs.thumbs.shape == (4, 64, 64) and with_thumbs.signatures.shape[0] == 4
    stamp = saved.stat().st_mtime_ns
    again = load_catalogue(workdir, root=tmp_path)
    assert saved.stat().st_mtime_ns == stamp and np.array_equal(again.thumbs, with_thumbs.thumbs)
    assert load_catalogue(workdir).thumbs is None      # another root (none): rebuilt
    assert len(load_catalogue(workdir)) == 4
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


def test_hash_match_between_different_cars_is_vetoed_by_the_pictures(curate_data):
    """indian-cars-7: an Innova render 6 bits from an Audi render (a `near` hash match); their
    pictures do not line up (aligned 0.29), so with thumbnails it is no match."""
    root = curate_data / "indian-cars-7"
    audi, innova = "test/Audi/349.jpg", "test/ToyotaInnova/1105.jpg"
    rows = [_manifest_row(root, audi, "Audi")]
    hashes_only = build_catalogue(pd.DataFrame(rows), "indian-cars-7")
    with_thumbs = build_catalogue(pd.DataFrame(rows), "indian-cars-7", root)
    data = (root / innova).read_bytes()
    assert _lookup(hashes_only, data)["how"] == "near"
    assert _lookup(with_thumbs, data) is None
    copy = _lookup(with_thumbs, _jpeg(Image.open(root / audi).convert("RGB").resize((300, 200)), 70))
    assert copy is not None and copy["path"] == audi
