"""Per-image hashes: imagehash's definitions, mirror and inner-crop variants, bad files, digests."""
from __future__ import annotations

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from curation.dedupe.hashing import (INNER_CROP, KINDS, hash_columns, hash_file, hash_files,
                              image_hashes, lanczos_weights, parse_kinds, pixel_digest, to_uint64)
from tests.conftest import synthetic_photo

REFERENCE = {"phash": imagehash.phash, "dhash": imagehash.dhash,
             "ahash": imagehash.average_hash,
             "whash": lambda image: imagehash.whash(image, image_scale=64)}
# Bits ours may differ from imagehash's on the same decoded image: pHash and wHash are the same
# computation; dHash and aHash come from pHash's 32x32 grid in float, without PIL's uint8
# rounding and clipping between its two resize passes.
ALLOWED_BITS = {"phash": 0, "whash": 0, "dhash": 4, "ahash": 3}


def bits(a: str | int, b: str | int) -> int:
    a, b = (int(v, 16) if isinstance(v, str) else v for v in (a, b))
    return bin(a ^ b).count("1")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("size", [(64, 41), (120, 57), (37, 90)])
def test_hashes_follow_imagehash_for_image_and_mirror(seed, size):
    image = synthetic_photo(seed, size)
    ours = image_hashes(image, KINDS)
    gray = image.convert("L")
    for kind, reference in REFERENCE.items():
        assert bits(ours[kind], str(reference(gray))) <= ALLOWED_BITS[kind], kind
        mirrored = str(reference(ImageOps.mirror(gray)))
        assert bits(ours[f"{kind}_mirror"], mirrored) <= ALLOWED_BITS[kind], kind


def test_lanczos_weights_are_pils_filter():
    """The matrices behind dHash/aHash/inner grids resample exactly as PIL's float Lanczos."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, size=(32, 32)).astype(np.float32)
    for size, box in [((9, 8), (0, 0, 32, 32)), ((32, 32), (1.44, 1.44, 30.56, 30.56)),
                      ((8, 8), (0, 0, 32, 32))]:
        theirs = np.asarray(Image.fromarray(pixels, "F").resize(size, Image.Resampling.LANCZOS,
                                                                box=box))
        rows = lanczos_weights(32, size[1], box[1], box[3])
        cols = lanczos_weights(32, size[0], box[0], box[2])
        np.testing.assert_allclose(rows @ pixels @ cols.T, theirs, atol=1e-3)


def test_hex_columns_match_imagehash_strings(tmp_path, make_image):
    path = make_image(tmp_path / "a.png", seed=4, size=(64, 48))
    row = hash_file((str(path), ("phash",)))
    assert row["phash"] == str(imagehash.phash(Image.open(path).convert("L")))
    assert set(row) == set(hash_columns(["phash"])) == {"phash", "phash_mirror", "phash_inner",
                                                               "phash_mirror_inner"}


def test_inner_hash_matches_a_border_cropped_copy_better():
    image = synthetic_photo(5, (320, 240)).resize((640, 480))
    w, h = image.size
    cropped = image.crop((int(w * INNER_CROP), int(h * INNER_CROP),
                          int(w * (1 - INNER_CROP)), int(h * (1 - INNER_CROP))))
    small = [im.resize((64, round(64 * im.height / im.width))) for im in (image, cropped)]
    original, copy = (image_hashes(im, ["phash"]) for im in small)
    assert bits(original["phash_inner"], copy["phash"]) < bits(original["phash"], copy["phash"])
    assert bits(original["phash_inner"], copy["phash"]) <= 4


@pytest.mark.parametrize("kind", ["phash", "dhash", "ahash", "whash"])
def test_mirrored_inner_hash_matches_a_mirrored_cropped_copy(kind):
    image = synthetic_photo(6, (320, 240)).resize((640, 480))
    w, h = image.size
    copy = ImageOps.mirror(image.crop((int(w * INNER_CROP), int(h * INNER_CROP),
                                       int(w * (1 - INNER_CROP)), int(h * (1 - INNER_CROP)))))
    small = [im.resize((64, round(64 * im.height / im.width))) for im in (image, copy)]
    original, mirrored = (image_hashes(im, [kind]) for im in small)
    aligned = bits(original[f"{kind}_mirror_inner"], mirrored[kind])
    assert aligned <= 4
    assert aligned < min(bits(original[f"{kind}{v}"], mirrored[kind])
                         for v in ("", "_mirror", "_inner"))


def test_mirror_hash_finds_a_mirrored_file(tmp_path, make_image):
    path = make_image(tmp_path / "a.jpg", seed=6, size=(200, 150), quality=95)
    flipped = tmp_path / "b.jpg"
    ImageOps.mirror(Image.open(path)).save(flipped, quality=95)
    a, b = (hash_file((str(p), ("phash", "dhash"))) for p in (path, flipped))
    for kind in ("phash", "dhash"):
        assert bits(a[f"{kind}_mirror"], b[kind]) <= 4
        assert bits(a[kind], b[kind]) > 8


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
