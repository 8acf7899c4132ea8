"""`curate report`: one self-contained HTML page of everything the pipeline found and trained.

Reads the workdir only (manifest, runs/*.json, metrics and plots the steps wrote, lift.json);
thumbnails are embedded as data: URIs so the file can be mailed or attached to a ticket. Each
section shows its data when the step that makes it has run, and says which command to run if not.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curation.report import html_page as h
from curation.config import DatasetConfig
from curation.leaks import leak_report
from curation.vocabulary import HELD_OUT, manifest_groups, split_sort_key
from curation.manifest import atomic_write_text, read_manifest
from curation.registry import RECORD_ORDER
from curation.report.model_sections import model_sections
from curation.scan.step import error_reason
from curation.sheets import thumbnail_data_uri

REPORT_NAME = "report.html"
THUMB = 112
MAX_GROUPS = 12
MAX_PER_REASON = 24


@dataclass
class Context:
    """What every section reads: the manifest, the dataset root, the workdir and the step records."""

    config: DatasetConfig
    workdir: Path
    manifest: pd.DataFrame
    runs: dict
    thumbs: dict = field(default_factory=dict)

    def has(self, *columns: str) -> bool:
        return all(c in self.manifest.columns for c in columns)

    def thumb(self, path: str) -> str:
        """The image at manifest path `path` as a JPEG data: URI (cached per report)."""
        if path not in self.thumbs:
            self.thumbs[path] = thumbnail_data_uri(self.config.root / path, THUMB)
        return self.thumbs[path]

    def hint(self, command: str) -> str:
        return f"curate {command} {self.config.name}"


def short(path: str, parts: int = 2) -> str:
    """The last folders and file name of a manifest path, for captions."""
    return "/".join(str(path).split("/")[-parts:])


def crosstab(frame: pd.DataFrame, rows: str, columns: str) -> tuple[list[str], list[list]]:
    """(headers, rows) of a count table with totals, columns in split order."""
    table = pd.crosstab(frame[rows].fillna("(none)"), frame[columns].fillna("(none)"))
    order = sorted(table.columns, key=split_sort_key)
    table = table[order]
    body = [[str(idx), *[int(v) for v in row], int(row.sum())] for idx, row in table.iterrows()]
    body.append(["total", *[int(v) for v in table.sum()], int(table.to_numpy().sum())])
    return [rows, *map(str, order), "total"], body


def runs_section(ctx: Context) -> str:
    rows = [[step, record.get("finished", ""), record.get("seconds")]
            for step, record in ctx.runs.items()]
    if not rows:
        return h.missing(f"No step has recorded a run in {ctx.workdir}/runs yet.")
    return h.table(["step", "finished", "seconds"], rows)


def health_section(ctx: Context) -> str:
    m = ctx.manifest
    readable = m[m["readable"].astype(bool)]
    bad = m[~m["readable"].astype(bool)]
    counts = readable["label"].value_counts()
    body = h.stats([("files", len(m)), ("readable", len(readable)), ("unreadable", len(bad)),
                    ("classes", len(counts)), ("unlabelled", int(readable["label"].isna().sum()))])
    if m["given_split"].notna().any():
        headers, rows = crosstab(readable, "label", "given_split")
        body += "<h3>Readable images per class and given split folder</h3>" + h.table(headers, rows)
    else:
        body += "<h3>Readable images per class</h3>" + h.table(
            ["class", "images"], [[k, int(v)] for k, v in counts.sort_index().items()])
    if len(counts) > 1:
        body += h.paragraph(f"Largest class / smallest class: {counts.max()} / {counts.min()} "
                            f"(imbalance {counts.max() / counts.min():.1f}x).")
    if len(bad):
        reasons = bad.assign(reason=bad["error"].map(error_reason)).groupby("reason")["path"]
        rows = [[reason, len(paths), ", ".join(sorted(paths)[:8]) + (" …" if len(paths) > 8 else "")]
                for reason, paths in reasons]
        body += "<h3>Unreadable files by reason</h3>" + h.table(["reason", "files", "paths"], rows)
    return body


def _groups(ctx: Context) -> tuple[pd.Series, str | None]:
    """Duplicate group ids and where they came from (dedupe, or byte-identical files)."""
    groups, from_dedupe = manifest_groups(ctx.manifest)
    if from_dedupe:
        return groups, None
    return groups, (f"Near-duplicates have not been searched yet: showing "
                                       f"byte-identical files only. Run `{ctx.hint('dedupe')}`.")


def _group_gallery(ctx: Context, members: pd.DataFrame, title: str, leak_splits=()) -> str:
    figures = []
    for row in members.sort_values("path").itertuples():
        keeper = bool(getattr(row, "dup_keeper", False))
        distance = getattr(row, "dup_distance", None)
        where = row.given_split if isinstance(row.given_split, str) else ""
        lines = [short(row.path), f"{where} {'keeper' if keeper else ''}".strip()]
        reason = getattr(row, "dup_reason", None)
        if not keeper and isinstance(reason, str):
            lines.append(reason + (f", {int(distance)} bits" if pd.notna(distance) else ""))
        cls = "leak" if where in leak_splits else ("keeper" if keeper else "")
        figures.append(h.figure(ctx.thumb(row.path), lines, cls, row.path))
    return h.gallery(figures, title, cls="card")


def duplicates_section(ctx: Context) -> str:
    m = ctx.manifest
    groups, note = _groups(ctx)
    frame = m.assign(group=groups.array)
    grouped = frame[frame["group"].notna()]
    sizes = grouped.groupby("group").size().sort_values(ascending=False, kind="stable")
    body = h.paragraph(note, "missing") if note else ""
    body += h.stats([("duplicate groups", len(sizes)), ("images in groups", len(grouped)),
                     ("extra copies", int(len(grouped) - len(sizes)))])
    leaking: list[int] = []
    if m["given_split"].notna().any():
        report = leak_report(m, "given_split", groups=groups)
        leaking = [g["group"] for g in report["groups"]]
        pairs = ", ".join(f"{pair}: {n}" for pair, n in report["pairs"].items()) or "none"
        body += ("<h3>Leaks across the given split folders</h3>"
                 + h.paragraph(f"{report['leaking_groups']} duplicate groups "
                               f"({report['leaking_images']} images) cross the given splits; "
                               f"groups per split pair: {pairs}. A test image with a copy in "
                               f"train inflates test accuracy."))
        body += h.cards(_group_gallery(ctx, frame[frame["group"] == group], f"group {group}",
                                       leak_splits=HELD_OUT)
                        for group in leaking[:MAX_GROUPS])
        if len(leaking) > MAX_GROUPS:
            body += h.paragraph(f"… and {len(leaking) - MAX_GROUPS} more groups: see "
                                f"`curate check-leaks {ctx.config.name} --column given_split`.")
    others = [g for g in sizes.index if g not in set(leaking)][:MAX_GROUPS]
    if others:
        body += "<h3>Largest duplicate groups</h3>" + h.paragraph(
            "Green border: the keeper (most pixels, then least compressed, then path).")
        body += h.cards(_group_gallery(ctx, frame[frame["group"] == group],
                                       f"group {int(group)}: {int(sizes[group])} images")
                        for group in others)
    return body


def noise_section(ctx: Context) -> str:
    if not ctx.has("noise_flag"):
        return h.missing(f"Noise has not been flagged yet: run `{ctx.hint('flag-noise')}`.")
    m = ctx.manifest
    flagged = m[m["noise_flag"].fillna(False).astype(bool)]
    reasons = flagged["noise_reason"].fillna("(none)").value_counts()
    body = h.stats([("flagged", len(flagged)), ("of images", int(m["readable"].sum())),
                    *[(reason, int(n)) for reason, n in reasons.items()]])
    record = ctx.runs.get("flag-noise", {}).get("summary", {})
    known = {k: record[k] for k in ("threshold", "noise_rate", "backbone", "weights") if k in record}
    if known:
        body += h.paragraph("; ".join(f"{k}: {v}" for k, v in known.items()))
    body += h.paragraph("Flags are suggestions for review (`curate review`), not deletions. "
                        "Red border: flagged; caption: folder label → suggested label, score.")
    for reason, group in flagged.groupby(flagged["noise_reason"].fillna("(none)")):
        top = group.sort_values("noise_score", ascending=False).head(MAX_PER_REASON)
        figures = []
        for row in top.itertuples():
            suggestion = getattr(row, "suggested_label", None)
            label = f"{row.label} → {suggestion}" if isinstance(suggestion, str) else str(row.label)
            figures.append(h.figure(ctx.thumb(row.path), [short(row.path), label,
                                                          f"score {row.noise_score:.2f}"], "flag", row.path))
        more = f" (top {MAX_PER_REASON} of {len(group)})" if len(group) > MAX_PER_REASON else ""
        body += h.gallery(figures, f"{reason}: {len(group)} images{more}")
    return body


def review_section(ctx: Context) -> str:
    if not ctx.has("review_decision") or ctx.manifest["review_decision"].isna().all():
        return h.missing(f"No review decisions yet: `{ctx.hint('review')}`, then "
                         f"`{ctx.hint('review')} --sync`.")
    decisions = ctx.manifest["review_decision"].value_counts()
    return h.table(["decision", "images"], [[k, int(v)] for k, v in decisions.items()])


def split_section(ctx: Context) -> str:
    if not ctx.has("split"):
        return h.missing(f"No split yet: run `{ctx.hint('split')}`.")
    m = ctx.manifest
    label = "split_label" if ctx.has("split_label") else "label"
    headers, rows = crosstab(m.assign(**{"class": m[label]}), "class", "split")
    body = h.table(headers, rows)
    if ctx.has("split_excluded_by"):
        reasons = m["split_excluded_by"].dropna().value_counts()
        if len(reasons):
            body += "<h3>Excluded, by rule</h3>" + h.table(
                ["rule", "images"], [[k, int(v)] for k, v in reasons.items()])
    groups, _ = _groups(ctx)
    report = leak_report(m, "split", groups=groups)
    body += h.paragraph(f"Duplicate groups crossing train/val/test: {report['leaking_groups']} "
                        + ("(leak-free)." if not report["leaking_groups"] else "— see `curate check-leaks`."))
    return body


def synthetic_truth(config: DatasetConfig) -> dict | None:
    """The ground truth of a synthetic set made by `curate demo`, when the dataset is one."""
    path = config.root.parent / "ground_truth.json"
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    return truth if truth.get("synthetic") else None


def truth_section(ctx: Context, truth: dict) -> str:
    from curation.demo.synthetic import score

    scores = score(ctx.manifest, truth)
    rows = [[name.replace("_", " "), value["found"], value["planted"], value["rate"]]
            for name, value in scores.items() if isinstance(value, dict)]
    counts = [[name.replace("_", " "), value] for name, value in scores.items()
              if isinstance(value, int) and not isinstance(value, bool)]
    body = h.paragraph("What this run found of the problems `curate demo` planted "
                       "(listed in ground_truth.json beside the images).")
    body += h.table(["planted problem", "found", "planted", "rate"], rows)
    return body + (h.table(["check", "count"], counts) if counts else "")


def sections(ctx: Context) -> list[tuple[str, str, str]]:
    """(anchor, title, body) of every section, in reading order."""
    truth = synthetic_truth(ctx.config)
    parts = [("runs", "Pipeline runs", runs_section(ctx)),
             ("health", "Dataset health", health_section(ctx)),
             ("duplicates", "Duplicates and leaks", duplicates_section(ctx)),
             ("noise", "Flagged noise", noise_section(ctx)),
             ("review", "Review", review_section(ctx)),
             ("split", "Splits", split_section(ctx)),
             *model_sections(ctx.config, ctx.workdir, ctx.runs)]
    if truth:
        parts.insert(1, ("truth", "Planted vs found (synthetic)", truth_section(ctx, truth)))
    return parts


def read_runs(workdir: Path) -> dict:
    """Every runs/<step>.json a step recorded, in pipeline order (other steps after)."""
    records = []
    for path in sorted((Path(workdir) / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if "step" in record:
            records.append(record)
    position = {step: i for i, step in enumerate(RECORD_ORDER)}
    records.sort(key=lambda r: (position.get(r["step"], len(RECORD_ORDER)), r.get("finished", "")))
    return {r["step"]: r for r in records}


def build_report(config: DatasetConfig, workdir: Path, *, out: Path | None = None) -> dict:
    """Write the report (default <workdir>/report.html) and return a summary of what it holds."""
    started = time.time()
    workdir = Path(workdir)
    manifest = read_manifest(workdir, required=["path", "label", "readable", "given_split", "sha256"])
    runs = read_runs(workdir)
    ctx = Context(config, workdir, manifest, runs)
    parts = sections(ctx)
    truth = synthetic_truth(config)
    banner = truth["notice"] if truth else None
    subtitle = (f"{config.root} · {len(manifest)} files · generated "
                f"{time.strftime('%Y-%m-%d %H:%M')} by curate")
    out = Path(out) if out else workdir / REPORT_NAME
    atomic_write_text(out, h.page(f"curate report: {config.name}", subtitle, parts, banner))
    missing = [title for _, title, body in parts if 'class="missing"' in body]
    return {"report": str(out.resolve()), "bytes": out.stat().st_size, "sections": [t for _, t, _ in parts],
            "incomplete": missing, "thumbnails": len(ctx.thumbs), "synthetic": bool(truth),
            "seconds": round(time.time() - started, 2)}


def describe(summary: dict) -> str:
    """Where the report is and what it still lacks."""
    size = summary["bytes"] / 1e6
    lines = [f"Report: {summary['report']} ({size:.1f} MB, {summary['thumbnails']} thumbnails, "
             f"{len(summary['sections'])} sections) in {summary['seconds']} s."]
    if summary["incomplete"]:
        lines.append("Waiting for data: " + ", ".join(summary["incomplete"]) + ".")
    return "\n".join(lines)
