"""The catalogue index `curate check` and `curate serve` look re-used photos up in.

Built from a dataset's manifest once `curate dedupe` has hashed it: the same perceptual hash
columns (each hash, its mirror's and its inner crop's), the scan's sha256, path and label.
An upload matches a catalogue photo by dedupe's own rule (every hash kind within its threshold
as is, mirrored or against the other's inner crop; or the same bytes), searched with the
Hamming index of curation/dedupe/hamming.py. Persisted as <workdir>/check_index.npz and rebuilt
when the manifest changes.
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

from curation.dedupe.grouping import alignments_for, hash_matches, thresholds_for
from curation.dedupe.hamming import distances, pairs_within
from curation.dedupe.hashing import KINDS, gray_hashes, hash_columns, to_uint64
from curation.errors import CurateError
from curation.manifest import atomic_write, manifest_path, read_manifest

INDEX_NAME = "check_index.npz"
# Uneven crops: an upload is also hashed with CROP_CUT off each combination of its sides and
# matched against inner crops within CROP_SHARE of the thresholds. Measured (docs/check.md):
# 2-7 % crops found 0.83 -> 0.89 (stanford-cars-25) and 0.75 -> 0.82 (swift-wagonr); at the
# full threshold 0.98 / 0.93, but then 4 of 178 swift-wagonr catalogue photos matched another
# car photographed alike; at 3/4 none of the 1,070 catalogue or 198 fresh test photos matched
# a different photo (the two matches found were copies dedupe had not grouped).
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

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def thresholds(self) -> dict[str, int]:
        return thresholds_for(self.kinds, self.threshold)

    @cached_property
    def _by_sha(self) -> dict[str, int]:
        return {sha: k for k, sha in enumerate(self.sha256) if sha}

    def match(self, queries: list[dict[str, str]], digests: list[str],
              crops: list[list[dict[str, str]]] | None = None) -> list[dict | None]:
        """The closest catalogue photo each upload re-uses (or None): queries are the uploads'
        hash columns (hex, as gray_hashes gives), digests their sha256, crops (optional) the
        hashes of their crop_variants, tried last."""
        found = self._hash_match(queries, digests)
        if crops is not None:
            missing = [q for q, hit in enumerate(found) if hit is None]
            for q, hit in zip(missing, self._crop_match([crops[q] for q in missing])):
                found[q] = hit
        return found

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
        qi, bj = self._candidates(query_hashes)
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

    def _candidates(self, queries: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(query, catalogue) pairs whose first-kind hashes are within its threshold in some
        alignment: a superset of the matches, found by the Hamming search."""
        kind = self.kinds[0]
        radius = self.thresholds[kind]
        n = len(queries[kind])
        variants = [queries[kind], queries[kind + "_mirror"], queries[kind + "_inner"]]
        q, b, _ = pairs_within(self.hashes[kind], radius, queries=np.concatenate(variants))
        pairs = [q % n, b]
        base_variants = np.concatenate([self.hashes[kind + "_mirror"],
                                        self.hashes[kind + "_inner"]])
        q, b, _ = pairs_within(base_variants, radius, queries=queries[kind])
        pairs = [np.concatenate([pairs[0], q]), np.concatenate([pairs[1], b % len(self)])]
        codes = np.unique(pairs[0] * len(self) + pairs[1])
        return codes // len(self), codes % len(self)

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


def build_catalogue(manifest: pd.DataFrame, name: str = "") -> Catalogue:
    """A Catalogue of every manifest row whose hashes are all present."""
    kinds = manifest_kinds(manifest)
    columns = hash_columns(kinds)
    rows = manifest.dropna(subset=columns).reset_index(drop=True)
    label = "split_label" if "split_label" in rows.columns else "label"
    nothing = pd.Series([None] * len(rows), dtype=object)
    labels = rows[label] if label in rows.columns else nothing
    sha = rows["sha256"] if "sha256" in rows.columns else nothing
    return Catalogue(name=name, kinds=kinds, hashes={c: to_uint64(rows[c]) for c in columns},
                     paths=rows["path"].to_numpy(dtype=str), labels=_strings(labels),
                     sha256=_strings(sha))


def _strings(values: pd.Series) -> np.ndarray:
    """A numpy str array (nulls as ''), which np.savez stores without pickle."""
    return values.astype(object).where(values.notna(), "").to_numpy(dtype=str)


def _stamp(workdir: Path) -> str:
    """Identifies the manifest version an index was built from (size and mtime)."""
    stat = os.stat(manifest_path(workdir))
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def save_catalogue(catalogue: Catalogue, path: Path, stamp: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, stamp=stamp, name=catalogue.name, kinds=np.array(catalogue.kinds),
                     paths=catalogue.paths, labels=catalogue.labels, sha256=catalogue.sha256,
                     **{f"hash_{c}": v for c, v in catalogue.hashes.items()})
    atomic_write(path, write)


def _read_saved(path: Path, stamp: str) -> Catalogue | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["stamp"]) != stamp:
                return None
            kinds = tuple(str(k) for k in data["kinds"])
            return Catalogue(name=str(data["name"]), kinds=kinds,
                             hashes={c: data[f"hash_{c}"] for c in hash_columns(kinds)},
                             paths=data["paths"], labels=data["labels"], sha256=data["sha256"])
    except (OSError, KeyError, ValueError):   # absent, or from another version: rebuild
        return None


def load_catalogue(workdir: Path, name: str = "", threshold: int | None = None) -> Catalogue:
    """The workdir's catalogue index: the saved one while the manifest is unchanged, else
    built from the manifest and saved. threshold: Hamming bits for every hash kind (default:
    dedupe's measured ones)."""
    workdir = Path(workdir)
    stamp = _stamp(workdir) if manifest_path(workdir).exists() else ""
    catalogue = _read_saved(workdir / INDEX_NAME, stamp) if stamp else None
    if catalogue is None:
        catalogue = build_catalogue(read_manifest(workdir, required=["path"]),
                                    name or workdir.name)
        save_catalogue(catalogue, workdir / INDEX_NAME, stamp)
    catalogue.threshold = threshold
    return catalogue
