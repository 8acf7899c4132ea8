"""The catalogue index `curate check` and `curate serve` look re-used photos up in.

Built from a dataset's manifest once `curate dedupe` has hashed it: the same perceptual hash
columns (each hash, its mirror's and its inner crop's), the scan's sha256, path and label.
An upload matches a catalogue photo by dedupe's own rule (every hash kind within its threshold
as is, mirrored or against the other's inner crop; or the same bytes), searched with the
Hamming index of curation/dedupe/hamming.py; else, when the index holds the photos' thumbnails,
by the geometric check of the nearest few (lookalike.py). Persisted as
<workdir>/check_index.npz and rebuilt when the manifest or the dataset's root changes.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from curation.dedupe.embedding import NOT_ALIGNED
from curation.dedupe.grouping import alignments_for, hash_matches, thresholds_for
from curation.dedupe.hamming import distances, pairs_within
from curation.dedupe.hashing import KINDS, gray_hashes, hash_columns, to_uint64
from curation.errors import CurateError
from curation.images import DECODE_VERSION
from curation.manifest import atomic_write, manifest_path, read_manifest

from . import lookalike

INDEX_NAME = "check_index.npz"
INDEX_FORMAT = 2     # 2: thumbnails and colour signatures for the geometric check
# Uneven crops: an upload is also hashed with CROP_CUT off each combination of its sides and
# matched against inner crops within CROP_SHARE of the thresholds. Measured (docs/check.md):
# 2-7 % crops found 0.83 -> 0.89 (stanford-cars-25) and 0.75 -> 0.82 (swift-wagonr); at the
# full threshold 0.98 / 0.93, but then 4 of 178 swift-wagonr catalogue photos matched another
# car photographed alike; at 3/4 none of the 1,070 catalogue or 198 fresh test photos matched
# a different photo (the two matches found were copies dedupe had not grouped). The crops these
# miss are left to the geometric check (lookalike.py), which finds them picture against picture.
CROP_CUT = 0.025
CROP_SHARE = 0.75


class IndexMissing(CurateError, FileNotFoundError):
    """The catalogue's manifest has no perceptual hashes yet."""


@dataclass
class Catalogue:
    """Hash arrays (column -> uint64, one entry per catalogue photo) with paths, labels, sha256."""

    name: str
    kinds: tuple[str, ...]
    hashes: dict[str, np.ndarray]
    paths: np.ndarray
    labels: np.ndarray
    sha256: np.ndarray
    threshold: int | None = None   # bits for every kind; None: dedupe's measured defaults
    thumbs: np.ndarray | None = None       # (n, 64, 64) uint8 grayscale, lookalike.picture's
    signatures: np.ndarray | None = None   # (n, bins) colour signatures, lookalike.picture's

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def thresholds(self) -> dict[str, int]:
        return thresholds_for(self.kinds, self.threshold)

    @cached_property
    def _by_sha(self) -> dict[str, int]:
        return {sha: k for k, sha in enumerate(self.sha256) if sha}

    @cached_property
    def _by_path(self) -> dict[str, int]:
        return {str(path): k for k, path in enumerate(self.paths)}

    def match(self, queries: list[dict[str, str]], digests: list[str],
              crops: list[list[dict[str, str]]] | None = None,
              pictures: list[tuple[np.ndarray, np.ndarray]] | None = None) -> list[dict | None]:
        """The closest catalogue photo each upload re-uses (or None): queries are the uploads'
        hash columns (hex, as gray_hashes gives), digests their sha256, crops (optional) the
        hashes of their crop_variants, pictures (optional) their lookalike.picture, tried last
        when the index holds thumbnails."""
        found = self._hash_match(queries, digests)
        if crops is not None:
            missing = [q for q, hit in enumerate(found) if hit is None]
            for q, hit in zip(missing, self._crop_match([crops[q] for q in missing])):
                found[q] = hit
        if pictures is not None and self.thumbs is not None:
            found = self._veto(pictures, found)
            missing = [q for q, hit in enumerate(found) if hit is None]
            for q, hit in zip(missing, self._aligned_match([queries[q] for q in missing],
                                                           [pictures[q] for q in missing])):
                found[q] = hit
        return found

    def without(self, rows: np.ndarray) -> Catalogue:
        """The catalogue less the given rows (a bool mask or indices)."""
        keep = np.ones(len(self), bool)
        keep[rows] = False
        pick = (lambda array: None if array is None else array[keep])
        return Catalogue(name=self.name, kinds=self.kinds,
                         hashes={c: v[keep] for c, v in self.hashes.items()},
                         paths=self.paths[keep], labels=self.labels[keep],
                         sha256=self.sha256[keep], threshold=self.threshold,
                         thumbs=pick(self.thumbs), signatures=pick(self.signatures))

    def _hash_match(self, queries: list[dict[str, str]], digests: list[str]) -> list[dict | None]:
        """Same bytes, else dedupe's rule (near, cropped, mirrored)."""
        found: list[dict | None] = [None] * len(queries)
        for q, digest in enumerate(digests):
            if digest in self._by_sha:
                found[q] = self._entry(self._by_sha[digest], "same bytes", 0)
        pending = [q for q in range(len(queries)) if found[q] is None]
        if not pending or not len(self):
            return found
        query_hashes = {c: to_uint64([queries[q][c] for q in pending]) for c in self.hashes}
        qi, bj, _ = self._candidates(query_hashes, self.thresholds[self.kinds[0]])
        if not len(qi):
            return found
        combined = {c: np.concatenate([query_hashes[c], self.hashes[c]]) for c in self.hashes}
        checked = hash_matches(qi, bj + len(pending), combined, self.thresholds,
                               alignments_for(mirror=True))
        hits = checked[checked["match"]].sort_values(["i", "distance", "j"])
        for row in hits.drop_duplicates("i").itertuples(index=False):
            found[pending[row.i]] = self._entry(row.j - len(pending), row.alignment, row.distance)
        return found

    def _crop_match(self, crops: list[list[dict[str, str]]]) -> list[dict | None]:
        """Uploads cut further (crop_variants) against the catalogue's inner crops, every kind
        within CROP_SHARE of its threshold: finds copies cropped unevenly, which one centred
        inner crop misses."""
        found: list[dict | None] = [None] * len(crops)
        owners = np.repeat(np.arange(len(crops)), [len(c) for c in crops])
        if not len(owners) or not len(self):
            return found
        limits = {k: int(t * CROP_SHARE) for k, t in self.thresholds.items()}
        variants = {k: to_uint64([v[k] for c in crops for v in c]) for k in self.kinds}
        first = self.kinds[0]
        vi, bj, gap = pairs_within(self.hashes[first + "_inner"], limits[first],
                                   queries=variants[first])
        keep = np.ones(len(vi), bool)
        for kind in self.kinds[1:]:
            gaps = distances(variants[kind][vi], self.hashes[kind + "_inner"][bj])
            keep &= gaps <= limits[kind]
        hits = pd.DataFrame({"q": owners[vi[keep]], "j": bj[keep], "d": gap[keep]})
        for row in hits.sort_values(["q", "d", "j"]).drop_duplicates("q").itertuples(index=False):
            found[row.q] = self._entry(row.j, "cropped unevenly", row.d)
        return found

    def _veto(self, pictures: list[tuple[np.ndarray, np.ndarray]],
              found: list[dict | None]) -> list[dict | None]:
        """Hash matches (not the same bytes) whose pictures do not line up (as dedupe drops
        them: NOT_ALIGNED) or whose colours differ, dropped: catalogue renders of different
        cars, or of one car in two paints, can be within the hash thresholds (indian-cars-7)."""
        hashed = [q for q, hit in enumerate(found) if hit and hit["how"] != "same bytes"]
        if not hashed:
            return found
        query = np.array(hashed)
        rows = np.array([self._by_path[found[q]["path"]] for q in hashed])
        scores = lookalike.aligned([p[0] for p in pictures], self.thumbs, query, rows)
        agree = lookalike.colours_agree([p[1] for p in pictures], self.signatures, query, rows)
        dropped = {q for q, score, same in zip(hashed, scores, agree)
                   if score < NOT_ALIGNED or not same}     # a NaN score (flat) drops nothing
        return [None if q in dropped else hit for q, hit in enumerate(found)]

    def _aligned_match(self, queries: list[dict[str, str]],
                       pictures: list[tuple[np.ndarray, np.ndarray]]) -> list[dict | None]:
        """Uploads against their nearest catalogue photos by the geometric check (lookalike)."""
        found: list[dict | None] = [None] * len(queries)
        if not queries or not len(self):
            return found
        query_hashes = {c: to_uint64([q[c] for q in queries]) for c in self.hashes}
        qi, bj, gap = lookalike.nearest(*self._candidates(query_hashes, lookalike.LOOSE_BITS))
        scores = lookalike.confirm([p[0] for p in pictures], [p[1] for p in pictures],
                                   self.thumbs, self.signatures, qi, bj)
        hits = pd.DataFrame({"q": qi, "j": bj, "d": gap, "score": scores})
        hits = hits[hits["score"] >= lookalike.MIN_ALIGNED]
        for row in hits.sort_values(["q", "score"], ascending=[True, False]).drop_duplicates(
                "q").itertuples(index=False):
            found[row.q] = self._entry(row.j, f"aligned {row.score:.2f}", row.d)
        return found

    def _candidates(self, queries: dict[str, np.ndarray],
                    radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query, catalogue, bits) of the pairs whose first-kind hashes are within radius in
        some alignment (the fewest bits of any): a superset of the matches at that radius,
        found by the Hamming search."""
        kind = self.kinds[0]
        n = len(queries[kind])
        variants = [queries[kind], queries[kind + "_mirror"], queries[kind + "_inner"]]
        q, b, gap = pairs_within(self.hashes[kind], radius, queries=np.concatenate(variants))
        pairs = [q % n, b, gap]
        base_variants = np.concatenate([self.hashes[kind + "_mirror"],
                                        self.hashes[kind + "_inner"]])
        q, b, gap = pairs_within(base_variants, radius, queries=queries[kind])
        pairs = [np.concatenate([pairs[0], q]), np.concatenate([pairs[1], b % len(self)]),
                 np.concatenate([pairs[2], gap])]
        codes = pairs[0] * len(self) + pairs[1]
        order = np.lexsort((pairs[2], codes))
        codes, gap = codes[order], pairs[2][order]
        first = np.diff(codes, prepend=-1) != 0
        return codes[first] // len(self), codes[first] % len(self), gap[first]

    def _entry(self, k: int, how: str, distance: int) -> dict:
        return {"path": str(self.paths[k]), "label": _text(self.labels[k]), "how": how,
                "distance": int(distance)}


def crop_variants(gray: np.ndarray, kinds) -> list[dict[str, str]]:
    """The plain hashes of an upload with CROP_CUT cut off each non-empty combination of its
    four sides (15 pictures): one of them lines up with a catalogue photo's inner crop when the
    upload is that photo cropped by 2-7 % unevenly."""
    height, width = gray.shape
    out = []
    for left, top, right, bottom in itertools.product((0.0, CROP_CUT), repeat=4):
        if left or top or right or bottom:
            part = gray[round(height * top):height - round(height * bottom),
                        round(width * left):width - round(width * right)]
            hashes = gray_hashes(np.ascontiguousarray(part), kinds)
            out.append({kind: hashes[kind] for kind in kinds})
    return out


def _text(value) -> str | None:
    return None if value is None or value == "" or pd.isna(value) else str(value)


def manifest_kinds(manifest: pd.DataFrame) -> tuple[str, ...]:
    """The hash kinds whose three columns (plain, mirror, inner) the manifest holds, in
    dedupe's default order first (phash, dhash, ...)."""
    kinds = tuple(k for k in KINDS if set(hash_columns([k])) <= set(manifest.columns)
                  and manifest[k].notna().any())
    if not kinds:
        raise IndexMissing("the catalogue's manifest has no perceptual hashes: run "
                           "`curate dedupe DATASET` first")
    return kinds


def build_catalogue(manifest: pd.DataFrame, name: str = "", root: Path | None = None, *,
                    quiet: bool = True) -> Catalogue:
    """A Catalogue of every manifest row whose hashes are all present; with root (the folder
    the manifest's paths are relative to), also their thumbnails for the geometric check."""
    kinds = manifest_kinds(manifest)
    columns = hash_columns(kinds)
    rows = manifest.dropna(subset=columns).reset_index(drop=True)
    label = "split_label" if "split_label" in rows.columns else "label"
    nothing = pd.Series([None] * len(rows), dtype=object)
    labels = rows[label] if label in rows.columns else nothing
    sha = rows["sha256"] if "sha256" in rows.columns else nothing
    paths = rows["path"].to_numpy(dtype=str)
    thumbs, signatures = (lookalike.catalogue_pictures(paths, root, quiet=quiet)
                          if root is not None else (None, None))
    return Catalogue(name=name, kinds=kinds, hashes={c: to_uint64(rows[c]) for c in columns},
                     paths=paths, labels=_strings(labels), sha256=_strings(sha),
                     thumbs=thumbs, signatures=signatures)


def _strings(values: pd.Series) -> np.ndarray:
    """A numpy str array (nulls as ''), which np.savez stores without pickle."""
    return values.astype(object).where(values.notna(), "").to_numpy(dtype=str)


def _stamp(workdir: Path, root: Path | None) -> str:
    """Identifies what an index was built from: the manifest's version (size and mtime), the
    root its photos were read from for thumbnails (none: no thumbnails), the decoder that made
    them (images.load_array's version) and the index format."""
    stat = os.stat(manifest_path(workdir))
    where = str(Path(root).resolve()) if root is not None else ""
    made = f"{stat.st_size}:{stat.st_mtime_ns}:{where}:{DECODE_VERSION}:{INDEX_FORMAT}"
    return hashlib.sha256(made.encode()).hexdigest()[:16]


def save_catalogue(catalogue: Catalogue, path: Path, stamp: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, stamp=stamp, name=catalogue.name, kinds=np.array(catalogue.kinds),
                     paths=catalogue.paths, labels=catalogue.labels, sha256=catalogue.sha256,
                     **{f"hash_{c}": v for c, v in catalogue.hashes.items()},
                     **({} if catalogue.thumbs is None else
                        {"thumbs": catalogue.thumbs, "signatures": catalogue.signatures}))
    atomic_write(path, write)


def _read_saved(path: Path, stamp: str) -> Catalogue | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["stamp"]) != stamp:
                return None
            kinds = tuple(str(k) for k in data["kinds"])
            pictures = ({"thumbs": data["thumbs"], "signatures": data["signatures"]}
                        if "thumbs" in data.files else {})
            return Catalogue(name=str(data["name"]), kinds=kinds,
                             hashes={c: data[f"hash_{c}"] for c in hash_columns(kinds)},
                             paths=data["paths"], labels=data["labels"], sha256=data["sha256"],
                             **pictures)
    except (OSError, KeyError, ValueError):   # absent, or from another version: rebuild
        return None


def load_catalogue(workdir: Path, name: str = "", threshold: int | None = None,
                   root: Path | None = None, *, quiet: bool = True) -> Catalogue:
    """The workdir's catalogue index: the saved one while the manifest (and root) are
    unchanged, else built from the manifest and saved. threshold: Hamming bits for every hash
    kind (default: dedupe's measured ones); root: the dataset's folder, to keep thumbnails of
    its photos for the geometric check (none: hashes only)."""
    workdir = Path(workdir)
    stamp = _stamp(workdir, root) if manifest_path(workdir).exists() else ""
    catalogue = _read_saved(workdir / INDEX_NAME, stamp) if stamp else None
    if catalogue is None:
        catalogue = build_catalogue(read_manifest(workdir, required=["path"]),
                                    name or workdir.name, root, quiet=quiet)
        save_catalogue(catalogue, workdir / INDEX_NAME, stamp)
    catalogue.threshold = threshold
    return catalogue
