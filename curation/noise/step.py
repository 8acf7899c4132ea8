"""`curate flag-noise`: embed each image once, score non-car, outlier and mislabel signals, and
write the flags into the manifest with a CSV, a contact sheet and a score histogram.

The signals themselves are pure functions in noise_signals.py; this module does the I/O.

Judging happens per unit: one image, or one duplicate group (dedupe's dup_of, or identical
bytes) with one label, so copies are embedded and judged once and never straddle folds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import ConfigError, DatasetConfig, check_root
from curation.embed.cache import representatives
from curation.embed.compute import EmbedSettings, embed_files
from curation.embed.step import ensure_embeddings, readable_rows
from curation.figures import save_png
from curation.images import image_files
from curation.manifest import NOISE_COLUMNS, atomic_write
from curation.noise.signals import REASONS, SIGNAL_COLUMNS, NoiseParams, decide, noise_signals
from curation.settings import SettingError, setting
from curation.sheets import contact_sheet
from curation.steps import Step, Workdir, run_step

OUTPUT_COLUMNS = [*NOISE_COLUMNS, *SIGNAL_COLUMNS]


def judging_units(rows: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(unit index per row, units table with rep path, label, first row and fold group per unit)."""
    keys = pd.DataFrame({"rep": representatives(rows).to_numpy(),
                         "label": rows["label"].astype("string").to_numpy()})
    codes = keys.groupby(["rep", "label"], sort=False, dropna=False).ngroup().to_numpy()
    # first-appearance order, as ngroup; `row` is the unit's first row, whose vector it uses
    units = keys.drop_duplicates().rename_axis("row").reset_index()
    units["group"] = pd.factorize(units["rep"])[0]
    return codes, units


def class_ids(labels: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer class ids (-1 for unlabelled) and the sorted class names."""
    classes = sorted(labels.dropna().unique())
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup.get(v, -1) if pd.notna(v) else -1 for v in labels]), classes


def judge(rows: pd.DataFrame, vectors: np.ndarray, params: NoiseParams, *,
          threshold: float | None, max_flag_rate: float | None) -> tuple[pd.DataFrame, dict]:
    """Noise columns for `rows` (aligned, same index) from their embeddings, plus detector info."""
    codes, units = judging_units(rows)
    labels, classes = class_ids(units["label"])
    signals = noise_signals(vectors[units["row"].to_numpy()], labels, groups=units["group"].to_numpy(),
                            params=params)
    per_row = signals.table.iloc[codes].reset_index(drop=True)
    decisions = decide(per_row, params=params, threshold=threshold, max_flag_rate=max_flag_rate)
    uncapped = decide(per_row, params=params, threshold=threshold)["noise_flag"].sum()
    pred = per_row["pred_label"].to_numpy()
    suggested = pd.Series([classes[p] if p >= 0 else pd.NA for p in pred], dtype="string")
    given = rows["label"].astype("string").reset_index(drop=True)
    keep = decisions["noise_reason"].isin(["mislabel", "outlier"]) & (suggested != given)
    out = pd.concat([decisions, per_row[SIGNAL_COLUMNS]], axis=1)
    out["suggested_label"] = suggested.where(keep.fillna(False), pd.NA)
    out.insert(0, "path", rows["path"].to_numpy())
    info = dict(signals.info, units=int(len(units)), classes=len(classes),
                uncapped_flags=int(uncapped))
    return out[["path", *OUTPUT_COLUMNS]], info


def outside_photos(folder: Path) -> list[str]:
    """Absolute paths of the images directly or deeper under folder, sorted."""
    if not Path(folder).is_dir():
        raise ConfigError(f"--noncar-dir {folder}: not a folder")
    return sorted(str(p.resolve()) for p in image_files(folder))


@dataclass(frozen=True)
class Settings(EmbedSettings):
    """What `curate flag-noise` can be told: how to embed (as `curate embed`), then how to judge."""

    folds: int = setting(5, "Cross-validation folds of the mislabel head.", low=2, high=20)
    threshold: float | None = setting(
        None, "Flag when noise_score >= this (default: automatic, each signal's own cut from "
        "confident learning's noise-rate estimate and robust z-scores).", kind=float, low=0,
        high=1, low_open=True, high_open=True, run_flag="--noise-threshold")
    max_flag_rate: float | None = setting(0.3, "Flag at most this fraction of images (top scores).",
                                          kind=float, low=0, high=1, low_open=True)
    audit: bool = setting(False, "Also plant known noise in memory (5% wrong labels, and outside "
                          "photos with --noncar-dir) and report how much of it is caught.",
                          result=False)
    noncar_dir: Path | None = setting(None, "Folder of non-car photos for --audit to plant "
                                      "(never copied).", path="dir", exists=True, result=False)
    audit_rate: float = setting(0.05, "Share of planted noise.", cli=False, result=False)

    def __post_init__(self):
        if self.noncar_dir is not None and not self.audit:
            raise SettingError("flag-noise: option --noncar-dir is used by --audit; add --audit")


def run(work: Workdir, settings: Settings) -> dict:
    """Flag suspect images in <workdir>/manifest.parquet and write the noise outputs."""
    check_root(work.config)
    params = NoiseParams(folds=settings.folds, seed=settings.seed)
    embedding = EmbedSettings(**{f.name: getattr(settings, f.name) for f in fields(EmbedSettings)})
    manifest = work.read()
    rows = readable_rows(manifest)
    run = ensure_embeddings(work, rows, embedding)
    ok = ~np.isnan(run.vectors).any(axis=1) if run.vectors.size else np.zeros(len(rows), bool)
    rows, vectors = rows[ok].reset_index(drop=True), run.vectors[ok]
    if len(rows) < 3:
        raise ConfigError(f"dataset '{work.config.name}': only {len(rows)} readable images could "
                          f"be embedded; flag-noise needs at least 3")
    flags, info = judge(rows, vectors, params, threshold=settings.threshold,
                        max_flag_rate=settings.max_flag_rate)
    work.merge(manifest, _typed(flags))
    shown = flags.assign(label=rows["label"].to_numpy(), rep=representatives(rows).to_numpy())
    outputs = write_outputs(shown, work.root, work.path, settings.threshold)
    summary = summarize(flags, info, run, outputs, threshold=settings.threshold,
                        max_flag_rate=settings.max_flag_rate,
                        seconds=time.time() - work.started)
    summary.update(backbone=settings.backbone, weights=str(settings.weights))
    if settings.audit:
        summary["audit"] = run_audit(rows, vectors, work.path.resolve(), settings.noncar_dir,
                                     params, rate=settings.audit_rate, embedding=embedding,
                                     quiet=work.quiet)
    work.derived.update({k: v for k, v in asdict(params).items() if k not in ("folds", "seed")})
    summary["seconds"] = round(time.time() - work.started, 2)
    return summary


def flag_noise(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate flag-noise` as a function: see Settings for the keyword arguments."""
    return run_step(STEP, config, workdir, quiet=quiet, **settings)


def _typed(flags: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes so Parquet schemas match across runs."""
    return flags.astype({"noise_score": "float64", "noise_flag": "boolean",
                         "noise_reason": "string", "suggested_label": "string",
                         **{c: "float64" for c in SIGNAL_COLUMNS}})


def run_audit(rows: pd.DataFrame, vectors: np.ndarray, workdir: Path, noncar_dir: Path | None,
              params: NoiseParams, *, rate: float, embedding: EmbedSettings,
              quiet: bool = False) -> dict:
    """Plant `rate` mislabels (and outside photos from noncar_dir) in memory and score detection."""
    from curation.noise.audit import audit

    _, units = judging_units(rows)
    labels, _ = class_ids(units["label"])
    outside = None
    if noncar_dir is not None:
        photos = outside_photos(noncar_dir)
        embedded = embed_files(photos, workdir, settings=embedding, quiet=quiet).vectors
        outside = embedded[~np.isnan(embedded).any(axis=1)] if embedded.size else None
    return audit(vectors[units["row"].to_numpy()], labels, units["group"].to_numpy(), outside=outside,
                 mislabel_rate=rate, outside_rate=rate if outside is not None else 0.0,
                 params=params)


def write_outputs(flags: pd.DataFrame, root: Path, workdir: Path,
                  threshold: float | None) -> dict[str, str | None]:
    """noise.csv of flagged rows, a contact sheet of top suspects per reason (one tile per
    duplicate group, via the `rep` column), a score histogram."""
    flagged = flags[flags["noise_flag"]].sort_values("noise_score", ascending=False)
    columns = ["path", "label", "noise_reason", "noise_score", "suggested_label", *SIGNAL_COLUMNS]
    csv = atomic_write(Path(workdir) / "noise.csv",
                       lambda tmp: flagged[columns].to_csv(tmp, index=False, float_format="%.4f"))
    rows = []
    for reason in REASONS:
        top = flagged[flagged["noise_reason"] == reason].drop_duplicates("rep").head(16)
        for part in range(0, len(top), 8):
            rows.append((f"{reason} (top {part + 1}-{min(part + 8, len(top))} of "
                         f"{int((flagged['noise_reason'] == reason).sum())})",
                         [(Path(root) / r.path, _caption(r)) for r in top.iloc[part:part + 8].itertuples()]))
    sheet = contact_sheet(rows, Path(workdir) / "noise_suspects.png")
    histogram = write_histogram(flags, Path(workdir) / "noise_scores.png",
                                0.5 if threshold is None else threshold)
    return {"csv": str(csv), "contact_sheet": str(sheet) if sheet else None,
            "histogram": str(histogram)}


def _caption(row) -> str:
    """Given label on the first line; score and the suggested label on the second."""
    label = row.label if pd.notna(row.label) else "(no label)"
    suggestion = f" -> {row.suggested_label}" if pd.notna(row.suggested_label) else ""
    return f"{label}\n{row.noise_score:.2f}{suggestion}"


def write_histogram(flags: pd.DataFrame, out: Path, threshold: float) -> Path:
    """Stacked histogram of noise_score by reason (log counts) with the threshold line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5), dpi=110)
    axis = figure.subplots()
    bins = np.linspace(0, 1, 41)
    reasons = flags["noise_reason"].fillna("not flagged")
    names = ["not flagged", *REASONS]
    axis.hist([flags.loc[reasons == name, "noise_score"] for name in names], bins=bins,
              stacked=True, label=names, log=True)
    axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    axis.set_xlabel("noise_score (higher = more suspect)")
    axis.set_ylabel("images")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_png(figure, out)


def summarize(flags: pd.DataFrame, info: dict, run, outputs: dict, *, threshold, max_flag_rate,
              seconds: float) -> dict:
    """Counts per reason, the thresholds used, embedding figures and the top suspects."""
    flagged = flags[flags["noise_flag"]].sort_values("noise_score", ascending=False)
    by_reason = {r: int((flagged["noise_reason"] == r).sum()) for r in REASONS}
    capped = info["uncapped_flags"] > len(flagged)
    return {
        "images": int(len(flags)), "flagged": int(len(flagged)),
        "flagged_rate": round(len(flagged) / len(flags), 4) if len(flags) else 0.0,
        "noise_rate": round((info.get("non_car_estimate", 0) + info.get("mislabel_estimate", 0))
                            / max(info["units"], 1), 4),
        "by_reason": by_reason,
        "threshold": "auto (0.5: each signal's own cut)" if threshold is None else threshold,
        "max_flag_rate": max_flag_rate, "capped_by_max_flag_rate": bool(capped),
        "detector": info,
        "embeddings": {"cache_file": str(run.cache_file), "engine": run.engine,
                       "computed": run.computed,
                       "reused": run.reused, "images_per_second": run.images_per_second,
                       "failed": dict(sorted(run.failed.items()))},
        "top": {r: flagged.loc[flagged["noise_reason"] == r, "path"].head(5).tolist()
                for r in REASONS},
        "outputs": outputs, "seconds": round(seconds, 2),
    }


def describe(summary: dict) -> str:
    """A short human summary of a flag-noise run."""
    emb, det = summary["embeddings"], summary["detector"]
    speed = f" at {emb['images_per_second']} img/s" if emb["images_per_second"] else ""
    lines = [f"Flagged {summary['flagged']} of {summary['images']} images "
             f"({summary['flagged_rate']:.1%}): " +
             ", ".join(f"{k} {v}" for k, v in summary["by_reason"].items()) +
             f"; threshold {summary['threshold']}.",
             f"Embedded {emb['computed']} images{speed}, reused {emb['reused']} cached; "
             f"{det['units']} units judged in {summary['seconds']} s."]
    if "mislabel_estimate" in det:
        lines.append(f"Confident learning estimates {det['mislabel_estimate']} wrong labels "
                     f"among {det['judged_for_mislabel']}; cross-validated head agrees with "
                     f"{det['probe_agreement']:.1%} of given labels.")
    elif "mislabel" in det:
        lines.append(f"Mislabel check {det['mislabel']}.")
    if summary["capped_by_max_flag_rate"]:
        lines.append(f"Capped by --max-flag-rate {summary['max_flag_rate']}: "
                     f"{det['uncapped_flags']} images pass the threshold; raise it to see all.")
    for path, reason in emb["failed"].items():
        lines.append(f"  could not embed {path}: {reason}")
    for reason, paths in summary["top"].items():
        if paths:
            lines.append(f"  top {reason}: " + ", ".join(paths[:3]))
    if "audit" in summary:
        lines.append(describe_audit(summary["audit"]))
    lines.append("Wrote " + ", ".join(p for p in summary["outputs"].values() if p) + ".")
    return "\n".join(lines)


def describe_audit(result: dict) -> str:
    """One line per planted kind: how much of it the detector caught."""
    lines = ["Audit (noise planted in memory; your files untouched):"]
    for kind in ("non_car", "mislabel"):
        if kind in result:
            r = result[kind]
            lines.append(f"  {kind}: planted {r['planted']}, recall {r['recall']:.1%}, "
                         f"precision {r['precision']:.1%}, F1 {r['f1']:.2f}")
    if "auroc" in result:
        lines.append(f"  noise_score AUROC {result['auroc']:.3f}")
    return "\n".join(lines)


HELP = """Flag non-car photos, wrong labels and outliers from backbone embeddings.

\b
Example: curate flag-noise stanford-cars-25
         curate flag-noise ~/photos/cars --weights ~/mobilenet_v2_no_top.h5
         curate flag-noise stanford-cars-25 --audit --noncar-dir ~/non-car
Embeddings come from the `curate embed` cache (missing ones are embedded first). Adds
noise_score, noise_flag, noise_reason, suggested_label and one column per signal to the
manifest, and writes noise.csv, noise_suspects.png and noise_scores.png. Files are never
changed.
"""


STEP = Step("flag-noise", Settings, run, describe, help=HELP,
            needs=("path", "label", "readable", "bytes", "mtime"), uses=("sha256", "dup_of"),
            adds=tuple(OUTPUT_COLUMNS), outputs=("noise.csv",), after=("embed",))
