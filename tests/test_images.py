"""The shared loader on every awkward kind of file, all generated here."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from curation.images import ImageError, image_files, load_array, load_gray, load_image, probe


def huge_png(path, width=100_000, height=100_000):
    """A tiny file whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_rgb_jpeg_loads_upright_rgb(tmp_path, make_image):
    path = make_image(tmp_path / "car.jpg", size=(160, 120))
    info = probe(path)
    assert (info.format, info.mode, info.width, info.height) == ("JPEG", "RGB", 160, 120)
    assert load_image(path).size == (160, 120)


def test_exif_rotation_is_applied(tmp_path, make_image):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = make_image(tmp_path / "rotated.jpg", size=(160, 120), exif=exif.tobytes())
    info = probe(path)
    assert (info.width, info.height) == (120, 160)
    assert load_image(path).size == (120, 160)
    assert load_image(path, max_side=80).size == (60, 80)


def test_cmyk_jpeg_becomes_rgb(tmp_path, make_image):
    path = make_image(tmp_path / "cmyk.jpg", mode="CMYK")
    assert probe(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    reference = np.asarray(load_image(make_image(tmp_path / "rgb.png")), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - reference).mean() < 20


def test_palette_with_transparency_composites_on_white(tmp_path):
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 20, 40))
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    pixels = np.asarray(load_image(path))
    assert tuple(pixels[5, 5]) == (255, 0, 0)
    assert tuple(pixels[5, 35]) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (8, 64, 3)
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255
    assert 100 < pixels[0, 32, 0] < 160


def test_rgba_png_named_jpg_is_judged_by_content(tmp_path, make_image):
    path = make_image(tmp_path / "really_png.jpg", fmt="PNG", mode="RGBA")
    assert probe(path).format == "PNG"
    assert load_image(path).mode == "RGB"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"just some text, not pixels\n" * 20, "not an image"),
    (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt"),
])
def test_bad_files_raise_a_named_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        probe(path)
    assert error.value.reason == reason


def test_truncated_jpeg_is_reported(tmp_path, make_image):
    path = make_image(tmp_path / "cut.jpg", size=(400, 300), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as error:
        probe(path)
    assert error.value.reason == "truncated"


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = huge_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    with pytest.raises(ImageError) as error:
        probe(path)
    assert error.value.reason == "too many pixels"


def test_max_pixels_is_a_setting(tmp_path, make_image):
    path = make_image(tmp_path / "big.png", size=(100, 100))
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(path, max_pixels=5_000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_load_array_has_requested_shape(tmp_path, make_image):
    path = make_image(tmp_path / "x.jpg", size=(300, 200))
    array = load_array(path, 64)
    assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert load_array(path, (32, 48)).shape == (32, 48, 3)


def test_image_files_lists_image_suffixes_under_a_folder(tmp_path, make_image):
    make_image(tmp_path / "b.JPG")
    make_image(tmp_path / "deeper" / "a.png", fmt="PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == ["b.JPG", "deeper/a.png"]


def _as_gray(image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").resize(shape[::-1], Image.Resampling.BOX), dtype=float)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_gray_turns_every_exif_orientation_like_pil(tmp_path, make_image, orientation):
    """The fast JPEG path reads the EXIF orientation itself; it must agree with exif_transpose."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = make_image(tmp_path / "o.jpg", seed=orientation, size=(192, 128), quality=95,
                      exif=exif.tobytes())
    gray = load_gray(path, min_side=32)
    upright = load_image(path)
    assert gray.shape[0] / gray.shape[1] == pytest.approx(upright.height / upright.width)
    assert np.abs(gray - _as_gray(upright, gray.shape)).mean() < 6


def test_load_gray_decodes_small_and_matches_other_formats(tmp_path, make_image):
    jpeg = make_image(tmp_path / "a.jpg", seed=3, size=(640, 480), quality=95)
    gray = load_gray(jpeg, min_side=32)
    assert min(gray.shape) >= 32 and max(gray.shape) <= 160  # a scaled decode, not 640 px
    for other in ("b.png", "c.webp"):
        Image.open(jpeg).save(tmp_path / other, **({"lossless": True} if "webp" in other else {}))
        fallback = load_gray(tmp_path / other, min_side=32)
        assert np.abs(_as_gray(Image.fromarray(fallback), (48, 64))
                      - _as_gray(Image.fromarray(gray), (48, 64))).mean() < 4


def test_load_gray_cmyk_and_broken_jpegs_take_the_full_loader(tmp_path, make_image):
    cmyk = make_image(tmp_path / "cmyk.jpg", seed=4, mode="CMYK")
    reference = load_image(cmyk).convert("L")
    gray = load_gray(cmyk, min_side=32)
    assert np.abs(_as_gray(reference, gray.shape) - gray).mean() < 6
    cut = make_image(tmp_path / "cut.jpg", size=(400, 300), quality=95)
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    with pytest.raises(ImageError) as error:
        load_gray(cut)
    assert error.value.reason == "truncated"
    big = make_image(tmp_path / "big.jpg", size=(200, 200))
    with pytest.raises(ImageError, match="too many pixels"):
        load_gray(big, max_pixels=10_000)


@pytest.mark.parametrize("name,mode", [("a.jpg", "RGB"), ("b.png", "RGBA"), ("c.webp", "RGB")])
def test_bytes_in_memory_decode_exactly_as_the_file_does(tmp_path, make_image, name, mode):
    path = make_image(tmp_path / name, seed=7, size=(300, 200), mode=mode)
    data = path.read_bytes()
    assert np.array_equal(load_array(data, 64), load_array(path, 64))
    assert np.array_equal(load_gray(data, min_side=32), load_gray(path, min_side=32))
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[:len(data) // 2])
    reasons = []
    for source in (cut, cut.read_bytes()):
        with pytest.raises(ImageError) as error:
            load_array(source, 64)
        reasons.append(str(error.value))
    assert reasons[0] == reasons[1]           # the same reason as the scan gives the file
    with pytest.raises(ImageError, match="too many pixels"):
        load_array(data, 64, max_pixels=10_000)
    with pytest.raises(ImageError, match="empty file"):
        load_array(b"", 64)
