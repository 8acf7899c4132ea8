"""A small SYNTHETIC vehicle dataset with planted problems, for `curate demo` and the tests.

Five drawn vehicle classes in `train/` and `test/` folders, plus what real scraped data has:
exact duplicates (byte copies and a PNG re-encode), near-duplicates (resized, re-compressed,
cropped, mirrored, brightened copies, some across train/test), mislabels (a vehicle in another
class's folder), off-topic pictures (landscapes, faces, logos, interiors) and broken files.
`ground_truth.json` beside the images lists every planted item so a run can be scored
(curation/report/truth.py). Test and demo fixtures: imports plumbing only, and no step imports it.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from curation.demo.drawing import SCENES, VEHICLE_CLASSES, scene, vehicle
from curation.manifest import atomic_write, atomic_write_json, atomic_write_text

NOTICE = ("SYNTHETIC data: drawn vehicle silhouettes made by `curation.demo.synthetic`, not photos. "
          "Good for seeing every step work; numbers on it say nothing about real photos.")
MIN_DISTINCT_DISTANCE = 16   # pHash bits between any two distinct pictures (mirror included)
NEAR_TRANSFORMS = ("resize", "jpeg", "crop", "mirror", "brightness", "resize+jpeg")


@dataclass(frozen=True)
class SyntheticSpec:
    """How many of each thing to draw and plant."""

    per_class: int = 44
    exact_duplicates: int = 10
    near_duplicates: int = 18
    mislabels: int = 12
    off_topic: int = 12
    broken: int = 2
    test_fraction: float = 0.25
    cross_split_fraction: float = 0.4   # share of planted duplicates placed in the other split
    size: tuple[int, int] = (128, 96)
    classes: tuple[str, ...] = VEHICLE_CLASSES


@dataclass
class Planted:
    """One file to write: its picture (or raw bytes) and what it really is."""

    path: str
    kind: str                      # original, exact_duplicate, near_duplicate, mislabel, off_topic, broken
    label: str | None              # the folder it sits in
    true_label: str | None         # what it shows (None for off-topic and broken files)
    image: Image.Image | None = None
    data: bytes | None = None      # raw bytes instead of an image (byte copies, broken files)
    info: dict = field(default_factory=dict)


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """The bytes of `image` in `fmt` (JPEG at `quality`, or lossless PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def near_copy(image: Image.Image, transform: str, rng: np.random.Generator) -> bytes:
    """A near-duplicate of `image`, as JPEG bytes, made by one named transform."""
    width, height = image.size
    if transform == "resize":
        return encode(image.resize((int(width * 0.7), int(height * 0.7)), Image.Resampling.LANCZOS))
    if transform == "jpeg":
        return encode(image, quality=int(rng.integers(30, 50)))
    if transform == "crop":
        dx, dy = int(width * rng.uniform(0.02, 0.04)), int(height * rng.uniform(0.02, 0.04))
        return encode(image.crop((dx, dy, width - dx, height - dy)))
    if transform == "mirror":
        return encode(ImageOps.mirror(image))
    if transform == "brightness":
        return encode(ImageEnhance.Brightness(image).enhance(rng.choice([0.85, 1.15])))
    if transform == "resize+jpeg":
        small = image.resize((int(width * 0.8), int(height * 0.8)), Image.Resampling.BILINEAR)
        return encode(small, quality=40)
    raise ValueError(f"unknown transform {transform!r} (known: {', '.join(NEAR_TRANSFORMS)})")


class DistinctPictures:
    """Redraws a picture until its pHash (and its mirror's) is far from every earlier one, so the
    ground truth's "distinct" pictures are not near-duplicates by accident."""

    def __init__(self, min_distance: int = MIN_DISTINCT_DISTANCE, tries: int = 50):
        self.hashes: list[np.ndarray] = []
        self.min_distance, self.tries = min_distance, tries

    def draw(self, make) -> Image.Image:
        for _ in range(self.tries):
            picture = make()
            codes = [imagehash.phash(p).hash.ravel() for p in (picture, ImageOps.mirror(picture))]
            if not self.hashes or min(int((np.array(self.hashes) != c).sum(axis=1).min())
                                      for c in codes) >= self.min_distance:
                self.hashes.append(codes[0])
                return picture
        raise RuntimeError(f"no picture {self.min_distance} bits from the rest in {self.tries} tries")


def plan(seed: int = 0, spec: SyntheticSpec = SyntheticSpec()) -> list[Planted]:
    """Every file of the synthetic set with its ground truth; pure (nothing written)."""
    rng = np.random.default_rng(seed)
    names = iter(rng.permutation(100_000))
    classes = list(spec.classes)

    def path(split: str, label: str, ext: str = "jpg") -> str:
        return f"{split}/{label}/img_{next(names):05d}.{ext}"

    drawn = DistinctPictures()
    originals: list[Planted] = []
    for label in classes:
        for i in range(spec.per_class):
            split = "test" if i < round(spec.per_class * spec.test_fraction) else "train"
            picture = drawn.draw(lambda: vehicle(rng, label, spec.size))
            originals.append(Planted(path(split, label), "original", label, label, picture))
    order = rng.permutation(len(originals))
    wanted = spec.exact_duplicates + spec.near_duplicates + spec.mislabels
    if wanted > len(order):
        raise ValueError(f"{wanted} planted items need more than {len(originals)} originals")
    sources = [originals[i] for i in order[:spec.exact_duplicates + spec.near_duplicates]]
    for item in (originals[i] for i in order[len(sources):wanted]):
        wrong = str(rng.choice([c for c in classes if c != item.true_label]))
        item.kind, item.label = "mislabel", wrong
        item.path = path(item.path.split("/")[0], wrong)
    copies = []
    for n, source in enumerate(sources):
        split = source.path.split("/")[0]
        if rng.random() < spec.cross_split_fraction:
            split = "train" if split == "test" else "test"
        base = {"of": source.path, "given_split_of": source.path.split("/")[0]}
        jpeg = encode(source.image)
        if n < spec.exact_duplicates:
            if n % 3 == 2:   # same decoded pixels, different encoding
                pixels = Image.open(io.BytesIO(jpeg)).convert("RGB")
                copies.append(Planted(path(split, source.label, "png"), "exact_duplicate", source.label,
                                      source.true_label, data=encode(pixels, "PNG"),
                                      info={**base, "how": "png re-encode of the decoded jpeg"}))
            else:
                copies.append(Planted(path(split, source.label), "exact_duplicate", source.label,
                                      source.true_label, data=jpeg, info={**base, "how": "byte copy"}))
        else:
            transform = NEAR_TRANSFORMS[(n - spec.exact_duplicates) % len(NEAR_TRANSFORMS)]
            data = near_copy(Image.open(io.BytesIO(jpeg)).convert("RGB"), transform, rng)
            copies.append(Planted(path(split, source.label), "near_duplicate", source.label,
                                  source.true_label, data=data, info={**base, "transform": transform}))
    off_topic = []
    for i in range(spec.off_topic):
        kind = SCENES[i % len(SCENES)]
        label = str(rng.choice(classes))
        split = "test" if rng.random() < spec.test_fraction else "train"
        picture = drawn.draw(lambda: scene(rng, kind, spec.size))
        off_topic.append(Planted(path(split, label), "off_topic", label, None, picture,
                                 info={"scene": kind}))
    broken = []
    for i in range(spec.broken):
        label = str(rng.choice(classes))
        if i % 2 == 0:
            whole = encode(vehicle(rng, label, spec.size))
            data, reason = whole[:len(whole) // 2], "truncated jpeg"
        else:
            data, reason = b"", "empty file"
        broken.append(Planted(path("train", label), "broken", label, None, data=data,
                              info={"reason": reason}))
    return originals + copies + off_topic + broken


def ground_truth(items: list[Planted], seed: int, spec: SyntheticSpec) -> dict:
    """What was planted, by kind, with paths relative to the image root (as in the manifest)."""
    def of_kind(kind: str, *keys: str) -> list[dict]:
        return [{"path": p.path, "label": p.label, "true_label": p.true_label,
                 **{k: p.info[k] for k in keys if k in p.info}} for p in items if p.kind == kind]

    kinds = ("original", "exact_duplicate", "near_duplicate", "mislabel", "off_topic", "broken")
    return {
        "synthetic": True, "notice": NOTICE, "seed": seed, "root": "images",
        "layout": "split_class_folders", "classes": list(spec.classes),
        "image_size": list(spec.size),
        "counts": {kind: sum(p.kind == kind for p in items) for kind in kinds} | {"files": len(items)},
        "exact_duplicates": of_kind("exact_duplicate", "of", "given_split_of", "how"),
        "near_duplicates": of_kind("near_duplicate", "of", "given_split_of", "transform"),
        "mislabels": of_kind("mislabel"),
        "off_topic": of_kind("off_topic", "scene"),
        "unreadable": of_kind("broken", "reason"),
        "true_labels": {p.path: p.true_label for p in items},
    }


def _readme(truth: dict) -> str:
    counts = truth["counts"]
    return (f"# {NOTICE}\n\nGenerated by `curate demo` (seed {truth['seed']}): {counts['files']} files "
            f"under images/ in train/ and test/ folders of {len(truth['classes'])} classes "
            f"({', '.join(truth['classes'])}).\n\nPlanted: {counts['exact_duplicate']} exact duplicates, "
            f"{counts['near_duplicate']} near-duplicates, {counts['mislabel']} mislabels, "
            f"{counts['off_topic']} off-topic pictures, {counts['broken']} broken files. "
            f"ground_truth.json lists each one.\n")


def generate(out: Path, *, seed: int = 0, spec: SyntheticSpec = SyntheticSpec()) -> dict:
    """Write the set to out/images, out/ground_truth.json and out/README.md; returns the truth.

    A complete set made earlier with the same seed and spec is reused as it is (so file mtimes,
    and every step's caches, stay valid); a folder this function did not make is refused.
    """
    out = Path(out)
    truth_path = out / "ground_truth.json"
    owned = (out / "README.md").is_file() and (out / "README.md").read_text().startswith(f"# {NOTICE}")
    if owned and truth_path.is_file():
        existing = json.loads(truth_path.read_text())
        if existing.get("seed") == seed and existing.get("spec") == _spec_dict(spec):
            return existing
    if not owned and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no synthetic set; choose an empty folder")
    items = plan(seed, spec)
    truth = ground_truth(items, seed, spec) | {"spec": _spec_dict(spec)}
    truth_path.unlink(missing_ok=True)
    atomic_write_text(out / "README.md", _readme(truth))   # marks the folder as ours first
    shutil.rmtree(out / "images", ignore_errors=True)
    for item in items:
        data = item.data if item.data is not None else encode(item.image)
        atomic_write(out / "images" / item.path, lambda tmp, data=data: tmp.write_bytes(data))
    atomic_write_json(truth_path, truth)
    return truth


def _spec_dict(spec: SyntheticSpec) -> dict:
    return json.loads(json.dumps(spec.__dict__))
