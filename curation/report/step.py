"""`curate report`: one self-contained HTML page of everything the pipeline found and trained.

Reads the workdir only (manifest, runs/*.json, metrics and plots the steps wrote, lift.json);
thumbnails are embedded as data: URIs so the file can be mailed or attached to a ticket. Each
section shows its data when the step that makes it has run, and says which command to run if not.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curation.config import DatasetConfig
from curation.leaks import leak_report
from curation.manifest import atomic_write_text
from curation.registry import RECORD_ORDER
from curation.report import html_page as h
from curation.report.context import Context, Section
from curation.report.model_sections import model_sections
from curation.report.truth import synthetic_truth, truth_section
from curation.scan.step import error_reason
from curation.settings import setting
from curation.steps import Step, Workdir, run_step
from curation.vocabulary import HELD_OUT, manifest_groups, split_sort_key

REPORT_NAME = "report.html"
MAX_GROUPS = 12
MAX_PER_REASON = 24


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
    decisions = ctx.manifest["review_decision"].value_counts()
    if decisions.empty:
        return h.paragraph("The last `curate review --sync` found no decision yet.")
    return h.table(["decision", "images"], [[k, int(v)] for k, v in decisions.items()])


def split_section(ctx: Context) -> str:
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


def sections(ctx: Context) -> list[Section]:
    """Every section in reading order, each with the step that fills it."""
    parts = [Section("runs", "Pipeline runs", runs_section),
             Section("health", "Dataset health", health_section, "scan"),
             Section("duplicates", "Duplicates and leaks", duplicates_section, "dedupe"),
             Section("noise", "Flagged noise", noise_section, "flag-noise",
                     "Noise has not been flagged yet: run `curate flag-noise {name}`."),
             Section("review", "Review", review_section, "review-sync",
                     "No review decisions yet: `curate review {name}`, then "
                     "`curate review {name} --sync`."),
             Section("split", "Splits", split_section, "split",
                     "No split yet: run `curate split {name}`."),
             *model_sections()]
    if synthetic_truth(ctx.config):
        parts.insert(1, Section("truth", "Planted vs found (synthetic)", truth_section))
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


REPORT_NEEDS = ("path", "label", "readable", "given_split", "sha256")


@dataclass(frozen=True)
class Settings:
    """What `curate report` can be told."""

    out: Path | None = setting(None, "Where to write the HTML (default: <workdir>/report.html).",
                               path="file", result=False)


def run(work: Workdir, settings: Settings) -> dict:
    """Write the page and return a summary of what it holds and which steps it waits for."""
    manifest = work.read()
    ctx = Context(work.config, work.path, manifest, read_runs(work.path))
    parts = sections(ctx)
    drawn = [(part.anchor, part.title, part.body(ctx)) for part in parts]
    truth = synthetic_truth(work.config)
    banner = truth["notice"] if truth else None
    subtitle = (f"{work.config.root} · {len(manifest)} files · generated "
                f"{time.strftime('%Y-%m-%d %H:%M')} by curate")
    out = settings.out or work.out(REPORT_NAME)
    atomic_write_text(out, h.page(f"curate report: {work.config.name}", subtitle, drawn, banner))
    waiting = [part for part in parts if part.waits(ctx)]
    return {"report": str(Path(out).resolve()), "bytes": Path(out).stat().st_size,
            "sections": [part.title for part in parts],
            "incomplete": [part.title for part in waiting],
            "waiting_for": list(dict.fromkeys(part.step for part in waiting)),
            "thumbnails": len(ctx.thumbs), "synthetic": bool(truth),
            "seconds": round(time.time() - work.started, 2)}


def describe(summary: dict) -> str:
    """Where the report is and what it still lacks."""
    size = summary["bytes"] / 1e6
    lines = [f"Report: {summary['report']} ({size:.1f} MB, {summary['thumbnails']} thumbnails, "
             f"{len(summary['sections'])} sections) in {summary['seconds']} s."]
    if summary["incomplete"]:
        lines.append("Waiting for data: " + ", ".join(summary["incomplete"]) + ".")
    return "\n".join(lines)


HELP = """Write one self-contained HTML page: health, duplicates and leaks, noise, splits, model.

\b
Example: curate report stanford-cars-25
         curate report swift-wagonr --out ~/swift-report.html
Thumbnails and plots are embedded, so the file can be sent on its own. Sections whose
step has not run say which command fills them.
"""

# Not in the registry: the report reads the registry (each section's step, the order of runs).
# It takes no lock: it only reads, and writes its page atomically.
STEP = Step("report", Settings, run, describe, help=HELP, needs=REPORT_NEEDS,
            outputs=(REPORT_NAME,), lock=False)


def build_report(config: DatasetConfig, workdir: Path, *, out: Path | None = None,
                 quiet: bool = True) -> dict:
    """`curate report` as a function: write the page (default <workdir>/report.html)."""
    return run_step(STEP, config, workdir, quiet=quiet, out=out)
