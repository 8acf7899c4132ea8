"""Contact sheets and thumbnails: the pictures every step writes so a person can check its work."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from curation.images import ImageError, load_image
from curation.manifest import atomic_write

BACKGROUND = (245, 245, 245)
CAPTION_HEIGHT = 28


def thumbnail(path: Path, size: int = 160) -> Image.Image:
    """An upright RGB thumbnail whose long side is `size`; a grey tile when the file is unreadable."""
    try:
        image = load_image(Path(path), max_side=size)
    except (ImageError, OSError):
        image = Image.new("RGB", (size, size), (200, 200, 200))
        ImageDraw.Draw(image).text((8, size // 2), "unreadable", fill=(90, 0, 0))
    image.thumbnail((size, size))
    return image


def thumbnail_data_uri(path: Path, size: int = 160, quality: int = 80) -> str:
    """A JPEG thumbnail as a data: URI, for self-contained HTML reports."""
    buffer = io.BytesIO()
    thumbnail(path, size).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(path: Path, caption: str, size: int, font) -> Image.Image:
    tile = Image.new("RGB", (size, size + CAPTION_HEIGHT), BACKGROUND)
    thumb = thumbnail(path, size)
    tile.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(caption.splitlines()[:2]):
        draw.text((3, size + 2 + 12 * i), line[: size // 6], fill=(20, 20, 20), font=font)
    return tile


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[Path, str]]]], out: Path, *,
                  tile_size: int = 140, max_columns: int = 8, legend: Sequence[str] = (),
                  footer: Sequence[str] = ()) -> Path | None:
    """Write a PNG with one row per (title, [(image path, caption), ...]); None when empty.

    Rows are e.g. one duplicate group each, or the top suspects of one noise reason. legend
    lines are drawn above the rows (what the captions' marks mean), footer lines below them
    (e.g. how many groups are not shown).
    """
    rows = [(title, list(items)[:max_columns]) for title, items in rows if items]
    if not rows:
        return None
    font = ImageFont.load_default()
    title_height = line_height = 18
    columns = max(len(items) for _, items in rows)
    row_height = title_height + tile_size + CAPTION_HEIGHT + 6
    top_space = len(legend) * line_height + (6 if legend else 0)
    height = top_space + len(rows) * row_height + len(footer) * line_height + 4
    sheet = Image.new("RGB", (columns * (tile_size + 4) + 4, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(legend):
        draw.text((4, 2 + i * line_height), line, fill=(60, 60, 60), font=font)
    for r, (title, items) in enumerate(rows):
        top = top_space + r * row_height + 2
        draw.text((4, top + 2), title, fill=(0, 0, 0), font=font)
        for c, (path, caption) in enumerate(items):
            sheet.paste(_tile(path, caption, tile_size, font),
                        (4 + c * (tile_size + 4), top + title_height))
    bottom = top_space + len(rows) * row_height + 2
    for i, line in enumerate(footer):
        draw.text((4, bottom + i * line_height), line, fill=(60, 60, 60), font=font)
    return atomic_write(Path(out), lambda tmp: sheet.save(tmp, format="PNG"))
