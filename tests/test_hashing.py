"""Per-image hashes: equal to imagehash's, mirror and inner-crop variants, bad files, pixel digests."""
from __future__ import annotations

import imagehash
import pandas as pd
import pytest
from PIL import Image, ImageOps

from curation.hashing import (INNER_CROP, KINDS, bits_to_int, hash_columns, hash_file, hash_files,
                              image_hashes, parse_kinds, pixel_digest, to_uint64)
from tests.conftest import synthetic_photo

REFERENCE = {"phash": imagehash.phash, "dhash": imagehash.dhash,
             "ahash": imagehash.average_hash,
             "whash": lambda image: imagehash.whash(image, image_scale=64)}


def bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hashes_equal_imagehash_for_image_and_mirror(seed):
    image = synthetic_photo(seed, (64, 41))
    ours = image_hashes(image, KINDS)
    gray = image.convert("L")
    for kind, reference in REFERENCE.items():
        assert ours[kind] == bits_to_int(reference(gray).hash), kind
        assert ours[f"{kind}_mirror"] == bits_to_int(reference(ImageOps.mirror(gray)).hash), kind


def test_hex_columns_match_imagehash_strings(tmp_path, make_image):
    path = make_image(tmp_path / "a.png", seed=4, size=(64, 48))
    row = hash_file((str(path), ("phash",), 64))
    assert row["phash"] == str(imagehash.phash(Image.open(path).convert("L")))
    assert set(row) == set(hash_columns(["phash"])) == {"phash", "phash_mirror", "phash_inner"}


def test_inner_hash_matches_a_border_cropped_copy_better():
    image = synthetic_photo(5, (320, 240)).resize((640, 480))
    w, h = image.size
    cropped = image.crop((int(w * INNER_CROP), int(h * INNER_CROP),
                          int(w * (1 - INNER_CROP)), int(h * (1 - INNER_CROP))))
    small = [im.resize((64, round(64 * im.height / im.width))) for im in (image, cropped)]
    original, copy = (image_hashes(im, ["phash"]) for im in small)
    assert bits(original["phash_inner"], copy["phash"]) < bits(original["phash"], copy["phash"])
    assert bits(original["phash_inner"], copy["phash"]) <= 4


def test_mirror_hash_finds_a_mirrored_file(tmp_path, make_image):
    path = make_image(tmp_path / "a.jpg", seed=6, size=(200, 150), quality=95)
    flipped = tmp_path / "b.jpg"
    ImageOps.mirror(Image.open(path)).save(flipped, quality=95)
    a, b = (hash_file((str(p), ("phash", "dhash"), 64)) for p in (path, flipped))
    for kind in ("phash", "dhash"):
        assert bits(int(a[f"{kind}_mirror"], 16), int(b[kind], 16)) <= 4
        assert bits(int(a[kind], 16), int(b[kind], 16)) > 8


def test_bad_files_give_a_reason_not_an_exception(tmp_path, make_image):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = make_image(tmp_path / "rgba.png", seed=7, mode="RGBA")
    frame = hash_files([str(empty), str(text), str(good), str(tmp_path / "gone.jpg")], ["phash"],
                       workers=1, quiet=True)
    assert list(frame["hash_error"].iloc[:2]) == ["empty file", "not an image"]
    assert frame["phash"].iloc[:2].isna().all()
    assert pd.isna(frame["hash_error"].iloc[2])
    assert len(frame["phash"].iloc[2]) == 16
    assert frame["hash_error"].iloc[3].startswith("unreadable")


def test_pixel_digest_sees_through_file_format(tmp_path, make_image):
    jpeg = make_image(tmp_path / "a.jpg", seed=8, quality=90)
    png = tmp_path / "a.png"
    Image.open(jpeg).save(png)
    other = make_image(tmp_path / "b.jpg", seed=9, quality=90)
    assert pixel_digest(str(jpeg)) == pixel_digest(str(png)) != pixel_digest(str(other))
    assert pixel_digest(str(tmp_path / "missing.png")) is None


def test_parse_kinds_and_hex_round_trip():
    assert parse_kinds("phash, DHASH,phash") == ("phash", "dhash")
    with pytest.raises(ValueError, match="unknown hash md5"):
        parse_kinds("phash,md5")
    with pytest.raises(ValueError):
        parse_kinds(" , ")
    values = ["0000000000000000", "ffffffffffffffff", "8000000000000001"]
    assert [f"{v:016x}" for v in to_uint64(values).tolist()] == values
