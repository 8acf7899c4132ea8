"""Drawn pictures for the SYNTHETIC demo set: five vehicle silhouettes on varied backgrounds, and
off-topic scenes. Pure functions of a numpy Generator, so a seed always gives the same pixels."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

VEHICLE_CLASSES = ("sedan", "hatchback", "pickup", "suv", "minibus")
SCENES = ("landscape", "portrait", "logo", "interior")
# Base hue of each class's paint (0-1); the shape differs too, so colour alone is not the answer.
_HUES = {"sedan": 0.0, "hatchback": 0.6, "pickup": 0.33, "suv": 0.8, "minibus": 0.15}
# body height, cabin outline (fractions of the length, up from the body's top), wheel positions
_GLASSHOUSES = {
    "sedan": (0.2, ((0.25, 0), (0.35, 0.16), (0.65, 0.16), (0.78, 0)), (0.2, 0.8)),
    "hatchback": (0.25, ((0.02, 0), (0.08, 0.25), (0.6, 0.25), (0.85, 0)), (0.18, 0.78)),
}


def _colour(rng: np.random.Generator, hue: float, *, hue_jitter: float = 0.04,
            sat=(0.55, 0.95), val=(0.55, 0.95)) -> tuple[int, int, int]:
    h = (hue + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Sky over ground with a random low-frequency texture and sensor noise (distinct per seed)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = rng.uniform(0.45, 0.65) * height
    sky = np.array(_colour(rng, rng.uniform(0.5, 0.7), sat=(0.1, 0.5), val=(0.7, 1.0)), np.float32)
    ground = np.array(_colour(rng, rng.choice([0.1, 0.3]), sat=(0.0, 0.4), val=(0.3, 0.6)),
                      np.float32)
    mask = (yy > horizon)[..., None]
    base = np.where(mask, ground, sky)
    freq, phase = rng.uniform(0.03, 0.15, size=2), rng.uniform(0, 2 * np.pi, size=3)
    texture = np.stack([np.sin(freq[0] * xx + freq[1] * yy + p) for p in phase], axis=-1)
    pixels = base + rng.uniform(15, 35) * texture + rng.normal(0, 6, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):   # buildings / trees on the horizon
        x = int(rng.integers(0, width))
        w, h = int(rng.integers(8, 30)), int(rng.integers(8, 35))
        draw.rectangle([x, horizon - h, x + w, horizon], fill=_colour(
            rng, rng.uniform(0, 1), sat=(0.0, 0.3), val=(0.3, 0.8)))
    return image


def _wheels(draw: ImageDraw.ImageDraw, x0: float, length: float, bottom: float, radius: float,
            where=(0.2, 0.8)) -> None:
    for frac in where:
        cx = x0 + frac * length
        draw.ellipse([cx - radius, bottom - radius, cx + radius, bottom + radius], fill=(25, 25, 25))
        draw.ellipse([cx - radius / 2, bottom - radius / 2, cx + radius / 2, bottom + radius / 2],
                     fill=(170, 170, 170))


def _silhouette(draw: ImageDraw.ImageDraw, kind: str, x0: float, bottom: float, length: float,
                paint, glass) -> None:
    """One vehicle facing right; its proportions are what tells the classes apart."""
    unit = length
    if kind in _GLASSHOUSES:   # a body box with a sloped cabin on top
        body, cabin, wheels = _GLASSHOUSES[kind]
        top = bottom - body * unit
        draw.rectangle([x0, top, x0 + unit, bottom], fill=paint)
        draw.polygon([(x0 + fx * unit, top - fy * unit) for fx, fy in cabin], fill=glass)
    elif kind == "pickup":
        top = bottom - 0.2 * unit
        draw.rectangle([x0, top, x0 + unit, bottom], fill=paint)
        draw.rectangle([x0 + 0.55 * unit, top - 0.22 * unit, x0 + 0.82 * unit, top], fill=paint)
        draw.rectangle([x0 + 0.6 * unit, top - 0.18 * unit, x0 + 0.78 * unit, top - 0.04 * unit],
                       fill=glass)
        draw.line([x0, top - 0.06 * unit, x0 + 0.55 * unit, top - 0.06 * unit], fill=paint,
                  width=max(1, int(0.03 * unit)))
        wheels = (0.18, 0.75)
    elif kind == "suv":
        top = bottom - 0.45 * unit
        draw.rectangle([x0, top, x0 + unit, bottom], fill=paint)
        draw.rectangle([x0 + 0.08 * unit, top + 0.05 * unit, x0 + 0.75 * unit, top + 0.2 * unit],
                       fill=glass)
        wheels = (0.2, 0.8)
    else:  # minibus
        top = bottom - 0.5 * unit
        draw.rounded_rectangle([x0, top, x0 + unit, bottom], radius=0.08 * unit, fill=paint)
        for i in range(5):
            left = x0 + (0.06 + 0.18 * i) * unit
            draw.rectangle([left, top + 0.08 * unit, left + 0.13 * unit, top + 0.22 * unit],
                           fill=glass)
        wheels = (0.15, 0.85)
    _wheels(draw, x0, unit, bottom, 0.09 * unit, wheels)


def vehicle(rng: np.random.Generator, kind: str, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A photo-like picture of one vehicle of class `kind` at a random place, scale and heading."""
    if kind not in VEHICLE_CLASSES:
        raise ValueError(f"unknown vehicle class {kind!r} (known: {', '.join(VEHICLE_CLASSES)})")
    width, height = size
    image = background(rng, size)
    length = rng.uniform(0.55, 0.8) * width
    x0 = rng.uniform(0.02, 0.98 - length / width) * width
    bottom = rng.uniform(0.7, 0.85) * height
    glass = _colour(rng, 0.55, sat=(0.1, 0.3), val=(0.25, 0.45))
    _silhouette(ImageDraw.Draw(image), kind, x0, bottom, length, _colour(rng, _HUES[kind]), glass)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def scene(rng: np.random.Generator, kind: str, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """An off-topic picture with no vehicle: a landscape, a face, a logo or a patterned interior."""
    width, height = size
    if kind == "landscape":
        image = background(rng, size)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            peak = (rng.uniform(0, width), rng.uniform(0.1, 0.4) * height)
            draw.polygon([(peak[0] - rng.uniform(30, 60), 0.7 * height), peak,
                          (peak[0] + rng.uniform(30, 60), 0.7 * height)],
                         fill=_colour(rng, 0.3, sat=(0.2, 0.5), val=(0.2, 0.5)))
        sun = rng.uniform(0.1, 0.9) * width
        draw.ellipse([sun - 9, 8, sun + 9, 26], fill=(255, 230, 120))
    elif kind == "portrait":
        image = Image.new("RGB", size, _colour(rng, rng.uniform(0, 1), sat=(0.1, 0.4)))
        draw = ImageDraw.Draw(image)
        cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.4, 0.6) * height
        rx, ry = 0.18 * width, 0.32 * height
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_colour(rng, 0.07, sat=(0.3, 0.5)))
        for dx in (-0.4, 0.4):
            draw.ellipse([cx + dx * rx - 4, cy - 0.2 * ry - 3, cx + dx * rx + 4, cy - 0.2 * ry + 3],
                         fill=(30, 30, 30))
        draw.arc([cx - 0.5 * rx, cy + 0.1 * ry, cx + 0.5 * rx, cy + 0.5 * ry], 20, 160,
                 fill=(120, 30, 30), width=2)
    elif kind == "logo":
        image = Image.new("RGB", size, (250, 250, 250))
        draw = ImageDraw.Draw(image)
        r = rng.uniform(0.25, 0.4) * height
        cx, cy = rng.uniform(0.3, 0.7) * width, height / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, rng.uniform(0, 1)))
        draw.text((cx - r / 2, cy - 5), "".join(rng.choice(list("ACDEKLMRSTXZ"), 3)),
                  fill=(255, 255, 255))
    elif kind == "interior":
        image = Image.new("RGB", size, _colour(rng, rng.uniform(0, 1), sat=(0.0, 0.3)))
        draw = ImageDraw.Draw(image)
        step = int(rng.integers(8, 20))
        tile = _colour(rng, rng.uniform(0, 1), sat=(0.2, 0.6))
        for i in range(0, width, step):
            for j in range(0, height, step):
                if (i // step + j // step) % 2:
                    draw.rectangle([i, j, i + step - 1, j + step - 1], fill=tile)
        draw.rectangle([0.2 * width, 0.3 * height, 0.5 * width, 0.9 * height],
                       fill=_colour(rng, rng.uniform(0, 1), val=(0.2, 0.5)))
    else:
        raise ValueError(f"unknown scene {kind!r} (known: {', '.join(SCENES)})")
    return image
