"""The FiftyOne dataset `curate review` serves: built from the manifest and updated in place.

Samples are keyed by their manifest `path`, so review tags survive re-runs and a moved data
root. Saved views point the reviewer at what to look at; the cached embeddings become a 2-D map
(fiftyone.brain with precomputed embeddings, so no model download).
"""
from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import ConfigError
from curation.review.tags import DROP, FLAG_TAGS, KEEP, RELABEL, decision_tags, sample_fields

MAP_KEY = "curate_map"
MAP_METHODS = ("auto", "umap", "tsne", "pca", "none")
WORKSPACE = "grid and map"
SCALAR_FIELDS = ["path", "given_label", "given_split", "split", "dup_group", "dup_group_size",
                 "dup_keeper", "dup_of", "dup_distance", "dup_reason", "noise_score", "noise_flag",
                 "noise_reason", "leaks_given_split", "leaks_split"]
LABEL_FIELDS = ["suggested_label", "duplicate_group"]     # shown as Classification badges
VIEW_NAMES = {"flagged": "flagged by score", "to_review": "flagged, not yet decided",
              "groups": "duplicate groups", "leaks": "groups crossing splits",
              "decided": "review decisions", "problems": "review problems"}


# ---- manifest rows -> FiftyOne values --------------------------------------------------------

def _python(value):
    """A pandas/numpy cell as a plain Python value FiftyOne stores (NA -> None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def field_values(fields: pd.DataFrame, root: Path) -> dict[str, list]:
    """Per FiftyOne field, the value of every row of `sample_fields` (same order)."""
    columns = {"filepath": [str(root / p) for p in fields["path"]],
               "given_label": [_python(v) for v in fields["label"]]}
    for name in SCALAR_FIELDS:
        if name in fields.columns:
            columns[name] = [_python(v) for v in fields[name]]
    return columns


def _classification(fo, label):
    return fo.Classification(label=label) if isinstance(label, str) else None


def _classifications(fo, fields: pd.DataFrame, column: str) -> list:
    if column not in fields.columns:
        return [None] * len(fields)
    return [_classification(fo, _python(v)) for v in fields[column]]


def _metadata(fo, fields: pd.DataFrame) -> list:
    if not {"width", "height", "bytes"} <= set(fields.columns):
        return [None] * len(fields)
    return [fo.ImageMetadata(width=_python(w), height=_python(h), size_bytes=_python(b))
            for w, h, b in zip(fields["width"], fields["height"], fields["bytes"])]


# ---- build ----------------------------------------------------------------------------------

def build_dataset(fo, name: str, manifest: pd.DataFrame, root: Path) -> tuple[object, dict]:
    """Create or update dataset `name` in place from the manifest; returns (dataset, counts).

    New samples get ground_truth, flag tags and any decision already in the manifest as tags;
    existing ones keep their tags and ground_truth (the reviewer's work) and get fresh fields
    and flag tags. Samples whose image left the manifest (or became unreadable) are deleted.
    """
    fields = sample_fields(manifest)
    created = not fo.dataset_exists(name)
    dataset = fo.Dataset(name, persistent=True) if created else fo.load_dataset(name)
    _declare_fields(fo, dataset)
    existing = dict(zip(*dataset.values(["path", "id"]))) if len(dataset) else {}
    is_new = ~fields["path"].isin(list(existing)).to_numpy()
    stale = sorted(set(existing) - set(fields["path"]))
    if stale:
        dataset.delete_samples([existing[p] for p in stale])
    values = field_values(fields, root)
    _add_samples(fo, dataset, fields, values, is_new, manifest)
    _update_samples(fo, dataset, fields, values, is_new, existing)
    _retag_flags(dataset, fields)
    dataset.info["curate"] = {"root": str(root), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    dataset.save()
    return dataset, {"created": created, "samples": len(dataset), "added": int(is_new.sum()),
                     "updated": int((~is_new).sum()), "removed": len(stale)}


def _declare_fields(fo, dataset) -> None:
    """The fields `sync` reads exist even while every value is still None."""
    for field in ("ground_truth", *LABEL_FIELDS):
        if not dataset.has_sample_field(field):
            dataset.add_sample_field(field, fo.EmbeddedDocumentField,
                                     embedded_doc_type=fo.Classification)
    for field in ("path", "given_label"):
        if not dataset.has_sample_field(field):
            dataset.add_sample_field(field, fo.StringField)


def _add_samples(fo, dataset, fields, values, is_new, manifest) -> None:
    if not is_new.any():
        return
    seeds = manifest.set_index("path").reindex(fields["path"])
    decisions = [decision_tags(d, lbl) for d, lbl in zip(
        seeds.get("review_decision", pd.Series(index=seeds.index, dtype=object)),
        seeds.get("review_label", pd.Series(index=seeds.index, dtype=object)))]
    labels = {name: _classifications(fo, fields, name) for name in LABEL_FIELDS}
    metadata = _metadata(fo, fields)
    samples = []
    for i in np.flatnonzero(is_new):
        sample = fo.Sample(filepath=values["filepath"][i], tags=[*fields["flags"][i], *decisions[i]],
                           metadata=metadata[i],
                           ground_truth=_classification(fo, values["given_label"][i]),
                           **{name: column[i] for name, column in labels.items()})
        for field, column in values.items():
            if field != "filepath":
                sample[field] = column[i]
        samples.append(sample)
    dataset.add_samples(samples, progress=False)


def _update_samples(fo, dataset, fields, values, is_new, existing) -> None:
    old = np.flatnonzero(~is_new)
    if not len(old):
        return
    ids = [existing[fields["path"][i]] for i in old]
    updates = {**values, "metadata": _metadata(fo, fields),
               **{name: _classifications(fo, fields, name) for name in LABEL_FIELDS}}
    for field in set(SCALAR_FIELDS) - set(values) - {"path"}:
        if dataset.has_sample_field(field):
            updates[field] = [None] * len(fields)       # the manifest no longer has this column
    for field, column in updates.items():
        dataset.set_values(field, {i: column[row] for i, row in zip(ids, old)}, key_field="id")


def _retag_flags(dataset, fields: pd.DataFrame) -> None:
    """Flag tags follow the manifest; every other tag (the reviewer's) is left alone."""
    dataset.untag_samples(list(FLAG_TAGS))
    for tag in FLAG_TAGS:
        paths = [p for p, flags in zip(fields["path"], fields["flags"]) if tag in flags]
        if paths:
            dataset.select_by("path", paths).tag_samples(tag)


def save_views(fo, dataset) -> list[str]:
    """The saved views a reviewer starts from; returns the names saved."""
    F = fo.ViewField
    decided = F("tags").filter((F() == KEEP) | (F() == DROP) | F().starts_with(RELABEL)).length() > 0
    flagged = dataset.match_tags(list(FLAG_TAGS))
    if dataset.has_sample_field("noise_score"):
        flagged = flagged.sort_by("noise_score", reverse=True)
    group_order = [("dup_group", 1), ("dup_keeper", -1), ("path", 1)]
    views = {"flagged": flagged, "to_review": flagged.match(~decided),
             "decided": dataset.match(decided).sort_by("path")}
    if dataset.has_sample_field("dup_group"):
        views["groups"] = dataset.match(F("dup_group_size") > 1).sort_by(group_order)
        leak_fields = [f for f in ("leaks_given_split", "leaks_split") if dataset.has_sample_field(f)]
        if leak_fields:
            crossing = F(leak_fields[0]) == True  # noqa: E712 (a MongoDB expression, not Python)
            for field in leak_fields[1:]:
                crossing = crossing | (F(field) == True)  # noqa: E712
            views["leaks"] = dataset.match(crossing).sort_by(group_order)
    for key, view in views.items():
        dataset.save_view(VIEW_NAMES[key], view, overwrite=True)
    return [VIEW_NAMES[k] for k in views]


def save_problem_view(dataset, paths: list[str]) -> None:
    """The samples whose review tags `--sync` could not read (empty when there are none)."""
    dataset.save_view(VIEW_NAMES["problems"], dataset.select_by("path", paths), overwrite=True)


# ---- embeddings map -------------------------------------------------------------------------

def load_embeddings(work, manifest: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """Embeddings by manifest path from the embed step's cache (the cold ones embedded first)."""
    from curation.embed.step import manifest_embeddings, readable_rows

    rows = readable_rows(manifest)
    vectors = manifest_embeddings(work, rows)
    if not vectors.size:
        return None
    found = ~np.isnan(vectors).any(axis=1)
    return dict(zip(rows["path"].astype(str)[found], vectors[found]))


def resolve_map_method(method: str) -> str:
    """`auto` is umap when umap-learn is installed, else t-SNE (no model download either way)."""
    if method not in MAP_METHODS:
        raise ConfigError(f"--map-method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ConfigError("--map-method umap needs umap-learn (pip install umap-learn); "
                          "use tsne or pca")
    if method == "auto":
        return "umap" if importlib.util.find_spec("umap") else "tsne"
    return method


def map_settings(method: str, count: int, dims: int, seed: int) -> dict:
    """compute_visualization keyword arguments that also work for small datasets."""
    settings = {"method": method, "seed": seed, "num_dims": 2}
    if method == "tsne":   # 500 iterations: half sklearn's default time, clusters already settled
        settings.update(pca_dims=min(50, count, dims), perplexity=float(min(30, (count - 1) / 3)),
                        max_iters=500, verbose=False)
    elif method == "umap":
        settings.update(num_neighbors=min(15, count - 1), verbose=False)
    return settings


def compute_map(fo, dataset, embeddings: dict | None, method: str, seed: int,
                announce=None) -> dict:
    """The 2-D embeddings map (brain key curate_map), recomputed only when its inputs changed."""
    import fiftyone.brain as fob

    if method == "none" or not embeddings:
        return {"map": None, "map_reason": "method none" if method == "none" else
                "no image could be embedded"}
    ids_by_path = dict(zip(*dataset.values(["path", "id"])))
    paths = sorted(p for p in embeddings if p in ids_by_path)
    if len(paths) < 5:
        return {"map": None, "map_reason": f"only {len(paths)} samples have embeddings"}
    matrix = np.stack([np.asarray(embeddings[p], dtype=np.float32) for p in paths])
    settings = map_settings(method, len(paths), matrix.shape[1], seed)
    digest = hashlib.sha256(matrix.tobytes() + repr((paths, settings)).encode()).hexdigest()
    if dataset.info.get("curate_map") == digest and MAP_KEY in dataset.list_brain_runs():
        return {"map": MAP_KEY, "map_method": method, "map_samples": len(paths), "map_reused": True}
    if MAP_KEY in dataset.list_brain_runs():
        dataset.delete_brain_run(MAP_KEY)
    if announce:
        announce(f"mapping {len(paths)} embeddings to 2-D with {method} (cached for later runs) ...")
    view = dataset.select([ids_by_path[p] for p in paths], ordered=True)
    fob.compute_visualization(view, embeddings=matrix, brain_key=MAP_KEY, progress=False, **settings)
    dataset.info["curate_map"] = digest
    dataset.save()
    panels = [fo.Panel(type="Samples", pinned=True),
              fo.Panel(type="Embeddings", state={"brainResult": MAP_KEY,
                                                 "colorByField": "ground_truth.label"})]
    dataset.save_workspace(WORKSPACE, fo.Space(children=panels, orientation="horizontal"),
                           overwrite=True)
    return {"map": MAP_KEY, "map_method": method, "map_samples": len(paths), "map_reused": False}
