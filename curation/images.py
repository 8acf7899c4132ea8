"""The one image loader every step uses: content sniffing, bomb guard, EXIF, modes, draft decode.

Anything that cannot be decoded raises ImageError with a short, stable reason that the scan
stores in the manifest's `error` column.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 80_000_000  # ~ a 10k x 8k photo; beyond that we refuse before decoding
EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
            7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
            8: lambda a: np.rot90(a)}   # ImageOps.exif_transpose's turns, on a (h, w[, c]) array
_FAST_SPACES = {"Gray", "YCbCr"}   # JPEG colour spaces libjpeg-turbo converts itself

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_MAGIC = (_JPEG_SIGNATURE, b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


class ImageError(Exception):
    """An image that cannot be used; `reason` is a short label for grouping in summaries."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int
    height: int


Source = Path | str | bytes   # a file, or an upload's bytes decoded in memory (never written)


def _head(source: Source, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    with open(source, "rb") as handle:
        return handle.read(size)


def _open(source: Source, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse empty files, non-images and decompression bombs."""
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if size == 0:
        raise ImageError("empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except Image.DecompressionBombError as exc:
        raise ImageError("too many pixels", str(exc)) from None
    except UnidentifiedImageError:
        if _head(source, 8).startswith(_MAGIC):
            raise ImageError("corrupt", "image signature but undecodable header") from None
        raise ImageError("not an image", "content is not a known image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("unreadable", str(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError("too many pixels", f"{width}x{height} exceeds the limit of {max_pixels:,}")
    if width == 0 or height == 0:
        image.close()
        raise ImageError("unreadable", "zero-sized image")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return 1


def _decode(image: Image.Image, max_side: int | None) -> Image.Image:
    """Decode pixels, at reduced size for JPEG when max_side allows (draft mode)."""
    if max_side and image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        reason = "truncated" if "truncated" in message or "broken data" in message else "corrupt"
        raise ImageError(reason, message) from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: alpha composited on white, 16-bit and float scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max()), 1.0)
        scaled = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def probe(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
          verify_side: int = 256) -> ImageInfo:
    """Format, mode and oriented size of an image, after checking that its pixels decode.

    The check decodes at reduced size (JPEG draft), which still reads the whole stream,
    so truncated files are caught at a fraction of the full decode cost.
    """
    image = _open(path, max_pixels)
    with image:
        fmt, mode = image.format or "unknown", image.mode
        width, height = image.size
        if _orientation(image) in _SWAPS_AXES:
            width, height = height, width
        _decode(image, verify_side)
    return ImageInfo(fmt, mode, width, height)


def load_image(path: Source, *, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image (a file, or bytes) as upright RGB; with max_side, decoded and shrunk so its
    long side <= max_side."""
    image = _open(path, max_pixels)
    with image:
        _decode(image, max_side)
        rgb = to_rgb(ImageOps.exif_transpose(image))
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return rgb


# Raised whenever load_array's pixels change, so caches of what it made (training's pixel
# cache, embed's vectors) are not read after an upgrade.
DECODE_VERSION = 2


def load_array(path: Source, size: int | tuple[int, int], *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 array (height, width, 3): the whole upright frame resized to `size` (aspect not
    kept). Every network input is made here (embeddings, training, predict, check), so a photo
    gives the same pixels, and the same vector, in every step.

    Ordinary JPEGs are decoded by libjpeg-turbo at the smallest DCT scale that keeps both sides
    >= size (simplejpeg), everything else in full by PIL; then one bilinear resize. (Shrinking
    by the long side first, as before, cost wide photos their height: cosine 0.92 to the direct
    resize's embedding on an 800x264 photo.)
    """
    height, width = (size, size) if isinstance(size, int) else size
    data = _jpeg_bytes(path)
    pixels = _scaled_jpeg(data, "RGB", max(height, width), max_pixels) if data else None
    if pixels is not None:
        image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    else:
        image = load_image(path, max_pixels=max_pixels)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_gray(path: Source, *, min_side: int = 32,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Upright grayscale uint8 array (height, width), decoded as small as keeps both sides
    >= min_side where the format allows it: what perceptual hashes are computed from.

    Ordinary JPEGs take a fast path (simplejpeg: libjpeg-turbo's scaled luma-only decode, no
    PIL header parse), ~1.2x PIL's draft decode (measured); everything else, and any JPEG that path
    refuses, goes through load_image so bad files get the same reasons as in the scan.
    """
    data = _jpeg_bytes(path)
    if data is not None:
        pixels = _scaled_jpeg(data, "GRAY", min_side, max_pixels)
        if pixels is not None:
            return pixels[:, :, 0]
    image = load_image(path, max_side=4 * min_side, max_pixels=max_pixels)
    return np.asarray(image.convert("L"))


def _jpeg_bytes(path: Source) -> bytes | None:
    """The whole file (or upload) when it is a JPEG; None (after reading 3 bytes) for anything else."""
    if isinstance(path, bytes):
        return path if path.startswith(_JPEG_SIGNATURE) else None
    with open(path, "rb") as handle:
        data = handle.read(len(_JPEG_SIGNATURE))
        return data + handle.read() if data == _JPEG_SIGNATURE else None


def _scaled_jpeg(data: bytes, colorspace: str, min_side: int, max_pixels: int) -> np.ndarray | None:
    """Upright (h, w, channels) pixels decoded at the smallest DCT scale keeping both sides >=
    min_side; None when libjpeg-turbo's fast path does not apply (CMYK, too big, broken)."""
    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
        if space not in _FAST_SPACES or not 0 < width * height <= max_pixels:
            return None
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, min_width=min_side,
                                        min_height=min_side)
    except ValueError:
        return None
    return _UPRIGHT.get(_jpeg_orientation(data), lambda a: a)(pixels)


def _jpeg_orientation(data: bytes) -> int:
    """EXIF orientation from a JPEG's APP1 segment (1 when absent or unreadable)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            exif = Image.Exif()
            try:
                exif.load(data[pos + 4:end])
                return int(exif.get(EXIF_ORIENTATION, 1))
            except Exception:  # a broken EXIF block must not make a good image unreadable
                return 1
        pos = end
    return 1


def image_files(folder: Path) -> list[Path]:
    """Files with an image suffix anywhere under folder, sorted: a loose folder of photos
    (e.g. non-car pictures) that is not a dataset with a manifest."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())
