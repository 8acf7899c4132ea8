"""`curate check`: one verdict per seller photo: is it the claimed model, a car, a re-used photo?

Verdicts, first that applies: `unreadable` (with the reason), `not_a_car` (embedding beyond
predict's calibrated distance), `duplicate` (re-uses a catalogue photo, see catalogue.py),
`wrong_model` (the model is confident it shows another class), `unsure` (top probability
below predict's calibrated floor), `ok`. The wrong-model rule is calibrated on the val split so
that at most MAX_FALSE_ALARM (1 %) of correctly labelled val photos are called wrong_model.
Uploads are decoded from bytes in memory; nothing is written per photo.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation.config import ConfigError, resolve_dataset
from curation.embed.engines import default_engine
from curation.dedupe.hashing import DECODE_MIN_SIDE, gray_hashes
from curation.images import ImageError, load_array, load_gray
from curation.manifest import atomic_write_json, read_manifest

from .catalogue import Catalogue, crop_variants
from .lookalike import picture
from .data import encode_labels, load_pixels, pixel_cache_dir, split_rows
from .predict import Predictor, top_k

VERDICTS = ("unreadable", "not_a_car", "duplicate", "wrong_model", "unsure", "ok")
# Share of correctly labelled val photos the rule may call wrong_model: half the 2 % budget,
# because val also picked the training epoch and so flatters the model on new photos
# (stanford-cars-25: val accuracy 0.92, test 0.86; false alarms on test ran ~3x val's).
MAX_FALSE_ALARM = 0.01
_FLOOR = 1e-12


def _claimed_probability(probs: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    return 1.0 - probs[np.arange(len(probs)), claimed]


def _log_ratio(probs: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    top = np.log(np.maximum(probs.max(axis=1), _FLOOR))
    return top - np.log(np.maximum(probs[np.arange(len(probs)), claimed], _FLOOR))


# How strongly the probabilities speak against the claimed class (higher: more against).
SCORES = {"claimed_probability": _claimed_probability, "log_ratio": _log_ratio}


def wrong_model_flags(probs: np.ndarray, claimed: np.ndarray, rule: dict) -> np.ndarray:
    """True where the rule calls the claim wrong: its score is above the calibrated threshold
    and the most probable class is another one. probs (n, classes); claimed (n,) indices."""
    probs, claimed = np.asarray(probs, np.float64), np.asarray(claimed, np.int64)
    score = SCORES[rule["score"]](probs, claimed)
    return (score > rule["threshold"]) & (probs.argmax(axis=1) != claimed)


def swapped_claims(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, other class) pair: each photo claimed as each class it is not."""
    rows = np.repeat(np.arange(len(y)), n_classes)
    claims = np.tile(np.arange(n_classes), len(y))
    other = claims != y[rows]
    return rows[other], claims[other]


def calibrate_wrong_model(val_probs: np.ndarray, val_y: np.ndarray, *,
                          max_false_alarm: float = MAX_FALSE_ALARM) -> dict:
    """The wrong-model rule: for each score, the threshold that flags at most max_false_alarm
    of the true val claims; the score whose rule catches most swapped val claims wins."""
    val_probs, val_y = np.asarray(val_probs, np.float64), np.asarray(val_y, np.int64)
    rows, claims = swapped_claims(val_y, val_probs.shape[1])
    candidates = {}
    for name, score in SCORES.items():
        threshold = float(np.quantile(score(val_probs, val_y), 1 - max_false_alarm,
                                      method="higher"))
        rule = {"score": name, "threshold": threshold}
        candidates[name] = {
            **rule,
            "val_false_alarm": round(float(wrong_model_flags(val_probs, val_y, rule).mean()), 4),
            "val_swap_recall": round(float(wrong_model_flags(val_probs[rows], claims,
                                                             rule).mean()), 4)}
    best = max(candidates.values(), key=lambda c: c["val_swap_recall"])
    return {**best, "max_false_alarm": max_false_alarm, "val_images": int(len(val_y)),
            "candidates": candidates}


def assign_verdicts(probs: np.ndarray, distances: np.ndarray, claimed: np.ndarray,
                    duplicate: np.ndarray, calibration: dict, rule: dict) -> list[str]:
    """The verdict of each decoded photo, by precedence: not_a_car, duplicate, wrong_model,
    unsure, ok. calibration is predict's ood.json; duplicate a bool per photo."""
    wrong = wrong_model_flags(probs, claimed, rule)
    out = []
    for p, d, dup, w in zip(probs, distances, duplicate, wrong):
        if d > calibration["distance_threshold"]:
            out.append("not_a_car")
        elif dup:
            out.append("duplicate")
        elif w:
            out.append("wrong_model")
        elif p.max() < calibration["min_confidence"]:
            out.append("unsure")
        else:
            out.append("ok")
    return out


@dataclass
class Upload:
    """One photo as checked: its decoded pixels and hashes, or why it could not be decoded."""

    name: str
    pixels: np.ndarray | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    crops: list[dict[str, str]] = field(default_factory=list)
    sha256: str = ""
    picture: tuple[np.ndarray, np.ndarray] | None = None   # lookalike.picture of the pixels
    error: str | None = None


def read_upload(name: str, data: bytes, image_size: int, kinds=(), *,
                pictures: bool = True) -> Upload:
    """Decode bytes in memory (bomb guard from the header) for the model (load_array, as in
    training: JPEGs at reduced DCT scale) and, when a catalogue is searched, its perceptual
    hashes (the same small luma decode dedupe hashes) and, unless the catalogue has no
    thumbnails (pictures=False), its thumbnail and colour signature (from the model's pixels)
    for the geometric check."""
    try:
        pixels = load_array(data, image_size)
        gray = load_gray(data, min_side=DECODE_MIN_SIDE) if kinds else None
    except ImageError as exc:
        return Upload(name, error=str(exc))
    except (OSError, ValueError) as exc:   # anything else PIL may raise on hostile bytes
        return Upload(name, error=f"unreadable: {exc}")
    if gray is None:
        return Upload(name, pixels, sha256=hashlib.sha256(data).hexdigest())
    return Upload(name, pixels, gray_hashes(gray, kinds), crop_variants(gray, kinds),
                  hashlib.sha256(data).hexdigest(), picture(pixels) if pictures else None)


def val_rule(predictor: Predictor, workdir: Path, root: Path | None = None) -> dict:
    """Calibrate the wrong-model rule on the val split of the workdir the model was trained in
    (for models trained before train.py stored it); images the pixel cache lacks are read
    from root (default: the trained dataset's root in datasets.yaml)."""
    if root is None:
        try:
            root = resolve_dataset(predictor.info.get("dataset", "")).root
        except ConfigError:
            root = Path(".")
    rows = split_rows(read_manifest(workdir, required=["path", "label"]), ("val",))
    pixels, rows, _ = load_pixels(rows, root, predictor.image_size, pixel_cache_dir(workdir),
                                  quiet=True)
    y = encode_labels(rows["label"], predictor.classes)
    if not (y >= 0).any():
        raise ValueError(f"{workdir}: no val photo of the model's classes to calibrate on")
    probs, _ = predictor.scores(pixels, rows["slot"].to_numpy()[y >= 0])
    return calibrate_wrong_model(probs, y[y >= 0])


class Checker:
    """A model folder (and optionally a catalogue), loaded once: verdicts for batches of uploads."""

    def __init__(self, model_dir: Path, *, catalogue: Catalogue | None = None,
                 workdir: Path | None = None, root: Path | None = None,
                 engine: str | None = None):
        model_dir = Path(model_dir)
        self.predictor = Predictor(model_dir, engine=engine or default_engine())
        self.catalogue = catalogue
        self.rule = self.predictor.calibration.get("wrong_model")
        if self.rule is None:
            self.rule = val_rule(self.predictor, workdir or model_dir.parent, root)
            self.predictor.calibration["wrong_model"] = self.rule
            atomic_write_json(model_dir / "ood.json", self.predictor.calibration)

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    def read(self, name: str, data: bytes) -> Upload:
        if self.catalogue is None:
            return read_upload(name, data, self.predictor.image_size)
        return read_upload(name, data, self.predictor.image_size, self.catalogue.kinds,
                           pictures=self.catalogue.thumbs is not None)

    def check(self, uploads: list[Upload], claimed_labels: list[str], *, k: int = 3) -> list[dict]:
        """One result per upload, in order. claimed_labels must be among self.classes."""
        results = [{"name": u.name, "claimed_label": c, "verdict": "unreadable",
                    "reason": u.error} for u, c in zip(uploads, claimed_labels)]
        good = [i for i, u in enumerate(uploads) if u.error is None]
        if not good:
            return results
        probs, distances = self.predictor.scores_in_memory(
            np.stack([uploads[i].pixels for i in good]))
        claimed = encode_labels([claimed_labels[i] for i in good], self.classes)
        matches = (self.catalogue.match([uploads[i].hashes for i in good],
                                        [uploads[i].sha256 for i in good],
                                        [uploads[i].crops for i in good],
                                        [uploads[i].picture for i in good])
                   if self.catalogue is not None else [None] * len(good))
        verdicts = assign_verdicts(probs, distances, claimed, [m is not None for m in matches],
                                   self.predictor.calibration, self.rule)
        ranked = top_k(probs, self.classes, k)
        for i, p, d, c, verdict, match, top in zip(good, probs, distances, claimed, verdicts,
                                                   matches, ranked):
            results[i].update(
                verdict=verdict, reason=_reason(verdict, top[0], match, self.catalogue),
                predicted=top[0]["label"], probability=top[0]["probability"],
                claimed_probability=round(float(p[c]), 4), ood_distance=round(float(d), 4),
                duplicate_of=match, top_k=top)
        return results


def _reason(verdict: str, top: dict, match: dict | None, catalogue: Catalogue | None) -> str | None:
    """A short human sentence for the verdicts that need one."""
    if verdict == "wrong_model":
        return f"looks like {top['label']} ({top['probability']:.0%})"
    if verdict == "duplicate":
        where = f" of {catalogue.name}" if catalogue is not None and catalogue.name else ""
        return f"re-uses catalogue photo {match['path']}{where} ({match['how']})"
    if verdict == "not_a_car":
        return "far from every trained class"
    return None


def summarize(results: list[dict]) -> dict:
    """Counts per verdict, in precedence order, and the total."""
    counts = Counter(r["verdict"] for r in results)
    return {"photos": len(results), "verdicts": {v: counts.get(v, 0) for v in VERDICTS}}
