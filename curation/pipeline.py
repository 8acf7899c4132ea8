"""`curate run`: scan → dedupe → flag-noise → split → train → evaluate in one command, resumable.

Each step keeps its own per-image caches; on top of them the pipeline skips a whole step when
its inputs are unchanged since it last finished. A step's fingerprint hashes its settings and
what it reads: the scanned files (path, size, mtime, content hash, label) for dedupe, and the
record the previous step wrote (runs/<step>.json) for every later step, plus review decisions
for split. `runs/pipeline.json` holds the fingerprints. Steps record their run only when they
finish and write files atomically, so a crash or Ctrl-C leaves the workdir consistent and the
next run resumes at the interrupted step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from curation.config import ConfigError, DatasetConfig, validate_backbone, validate_image_size
from curation.errors import ManifestUnreadable
from curation.manifest import (REVIEW_COLUMNS, ManifestMissing, atomic_write_json, read_manifest, read_run,
                       workdir_lock)

STEPS = ("scan", "dedupe", "flag-noise", "split", "train", "evaluate")
STATE_FILE = "pipeline.json"
_DATA_COLUMNS = ["path", "bytes", "mtime", "sha256", "readable", "label", "given_split"]


class StepFailed(RuntimeError):
    """A pipeline step raised; the message names the step and how to resume."""

    def __init__(self, step: str, cause: BaseException, summary: dict):
        self.step, self.cause, self.summary = step, cause, summary
        super().__init__(f"step '{step}' failed: {cause}")


@dataclass(frozen=True)
class RunSettings:
    """What `curate run` passes to the steps besides the dataset config."""

    seed: int = 0
    workers: int | None = None
    noise_threshold: float | None = None
    respect_given: bool = False


@dataclass(frozen=True)
class Step:
    name: str
    module: str                                   # where the step function and `describe` live
    call: Callable[[object, DatasetConfig, Path, RunSettings, bool], dict]
    settings: Callable[[DatasetConfig, RunSettings], dict]   # what its fingerprint hashes
    outputs: tuple[str, ...] = ()                 # files it must have left in the workdir

    def load(self):
        return importlib.import_module(self.module)


def _split_settings(config: DatasetConfig, run: RunSettings) -> dict:
    return {"ratios": list(config.ratios), "seed": run.seed, "respect_given": run.respect_given}


def _run_split(module, config: DatasetConfig, workdir: Path, run: RunSettings, quiet: bool) -> dict:
    """Split; a run asked for other ratios, seed or given splits than the last one re-splits all."""
    last = (read_run(workdir, "split") or {}).get("settings", {})
    wanted = _split_settings(config, run)
    changed = any(key in last and last[key] != value for key, value in wanted.items())
    return module.split(config, workdir, seed=run.seed, respect_given=run.respect_given,
                        reshuffle=changed, quiet=quiet)


def _train_settings(config: DatasetConfig, run: RunSettings) -> dict:
    return {"image_size": config.image_size, "backbone": config.backbone, "weights": config.weights,
            "training": dataclasses.asdict(config.training), "seed": run.seed}


STEP_TABLE = {step.name: step for step in (
    Step("scan", "curation.scan.step",
         lambda m, c, w, r, q: m.scan(c, w, workers=r.workers, quiet=q),
         lambda c, r: {"root": str(c.root), "layout": c.layout, "classes": c.classes}),
    Step("dedupe", "curation.dedupe.step",
         lambda m, c, w, r, q: m.dedupe(c, w, workers=r.workers, quiet=q),
         lambda c, r: {}),
    Step("flag-noise", "curation.noise.step",
         lambda m, c, w, r, q: m.flag_noise(c, w, seed=r.seed, threshold=r.noise_threshold,
                                            workers=r.workers, quiet=q),
         lambda c, r: {"backbone": c.backbone, "weights": c.weights, "image_size": c.image_size,
                       "seed": r.seed, "threshold": r.noise_threshold}),
    Step("split", "curation.split.step", _run_split, _split_settings),
    Step("train", "training.train",
         lambda m, c, w, r, q: m.train(c, w, seed=r.seed, workers=r.workers, quiet=q),
         _train_settings, outputs=("model/model.keras",)),
    Step("evaluate", "training.evaluate",
         lambda m, c, w, r, q: m.evaluate(c, w, batch_size=c.training.batch_size,
                                          workers=r.workers, quiet=q),
         _train_settings, outputs=("metrics.json",)),
)}


def steps_between(from_step: str | None, until: str | None) -> list[str]:
    """The steps from `from_step` to `until`, inclusive, in pipeline order."""
    for name in (from_step, until):
        if name is not None and name not in STEPS:
            raise ConfigError(f"unknown step '{name}' (steps: {', '.join(STEPS)})")
    first = STEPS.index(from_step) if from_step else 0
    last = STEPS.index(until) if until else len(STEPS) - 1
    if first > last:
        raise ConfigError(f"--from {from_step} comes after --until {until}")
    return list(STEPS[first:last + 1])


def with_overrides(config: DatasetConfig, *, image_size: int | None = None,
                   backbone: str | None = None, weights: str | None = None,
                   **training) -> DatasetConfig:
    """The config with command-line overrides applied (None means: keep datasets.yaml's value)."""
    changes = {"image_size": validate_image_size(image_size) if image_size else None,
               "backbone": validate_backbone(backbone) if backbone else None, "weights": weights}
    changes = {k: v for k, v in changes.items() if v is not None}
    tuned = {k: v for k, v in training.items() if v is not None}
    if tuned:
        known = {f.name for f in dataclasses.fields(config.training)}
        unknown = set(tuned) - known
        if unknown:
            raise ConfigError(f"unknown training setting(s) {sorted(unknown)} (known: {sorted(known)})")
        changes["training"] = dataclasses.replace(config.training, **tuned)
    return dataclasses.replace(config, **changes)


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def frame_digest(frame: pd.DataFrame, columns) -> str:
    """Hash of the given manifest columns (those present), row order independent."""
    present = [c for c in columns if c in frame.columns]
    if not present:
        return "none"
    rows = frame[present].astype("string").fillna("<NA>").sort_values(present[0])
    hashed = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(present).encode()).hexdigest()[:16]


def _record_digest(workdir: Path, step: str) -> str | None:
    path = Path(workdir) / "runs" / f"{step}.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def fingerprint(step: str, settings: dict, workdir: Path, manifest: pd.DataFrame | None) -> str:
    """What a step's result depends on: its settings and its inputs (see the module docstring)."""
    index = STEPS.index(step)
    if index <= 1:   # scan and dedupe read the files themselves
        upstream = frame_digest(manifest, _DATA_COLUMNS) if manifest is not None else None
    else:
        upstream = _record_digest(workdir, STEPS[index - 1])
    review = frame_digest(manifest, REVIEW_COLUMNS) if step == "split" and manifest is not None else ""
    return digest(step, settings, upstream, review)


def read_state(workdir: Path) -> dict:
    path = Path(workdir) / "runs" / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def is_current(step: Step, state: dict, print_: str, workdir: Path) -> str | None:
    """Why a step can be skipped, or None when it must run."""
    done = state.get(step.name)
    if not done or done.get("fingerprint") != print_:
        return None
    if done.get("record") != _record_digest(workdir, step.name):
        return None   # re-run by hand since, maybe with other settings
    if any(not (Path(workdir) / out).exists() for out in step.outputs):
        return None
    return f"unchanged since {done.get('finished', 'the last run')}"


def _manifest_or_none(workdir: Path) -> pd.DataFrame | None:
    try:
        return read_manifest(workdir)
    except (ManifestMissing, ManifestUnreadable):   # scan, which runs first, rebuilds it
        return None


def run_pipeline(config: DatasetConfig, workdir: Path, *, until: str | None = None,
                 from_step: str | None = None, settings: RunSettings = RunSettings(),
                 quiet: bool = False, on_step: Callable[[dict], None] | None = None,
                 leave_out: dict[str, str] | None = None) -> dict:
    """Run the steps in order, skipping the up-to-date ones; `from_step` forces a re-run from there.

    leave_out maps steps not to run at all to the reason, shown as their skip reason.

    on_step(entry) is called when a step starts (status 'running') and when it ends (ran,
    skipped or failed), so a caller can print as it goes. Raises StepFailed (with the partial summary) at the first step that fails.
    """
    workdir = Path(workdir)
    names = steps_between(from_step, until)
    started = time.time()
    entries: list[dict] = []
    summary = {"dataset": config.name, "workdir": str(workdir.resolve()), "steps": entries,
               "from": from_step, "until": until}
    with workdir_lock(workdir / "runs"):
        state = read_state(workdir)
        for name in names:
            step = STEP_TABLE[name]
            step_settings = step.settings(config, settings)
            print_ = fingerprint(name, step_settings, workdir, _manifest_or_none(workdir))
            forced = name == from_step or name == "scan"   # scan is what notices changed files
            reason = (leave_out or {}).get(name) or (
                None if forced else is_current(step, state, print_, workdir))
            entry = {"step": name, "status": "skipped", "seconds": 0.0, "reason": reason}
            if reason is None:
                _notify(on_step, {"step": name, "status": "running"})
                entry, error = _run_step(step, config, workdir, settings, quiet, entry)
                entries.append(entry)
                _notify(on_step, entry)
                if error is not None:
                    summary["seconds"] = round(time.time() - started, 2)
                    raise StepFailed(name, error, summary)
                print_ = fingerprint(name, step_settings, workdir, _manifest_or_none(workdir))
                state[name] = {"fingerprint": print_, "record": _record_digest(workdir, name),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "seconds": entry["seconds"]}
                atomic_write_json(workdir / "runs" / STATE_FILE, state)
            else:
                entries.append(entry)
                _notify(on_step, entry)
    summary["seconds"] = round(time.time() - started, 2)
    summary["ran"] = [e["step"] for e in entries if e["status"] == "ran"]
    summary["skipped"] = [e["step"] for e in entries if e["status"] == "skipped"]
    return summary


def _run_step(step: Step, config, workdir, settings, quiet, entry: dict):
    """(entry, None) when the step ran, (entry, exception) when it failed."""
    began = time.time()
    try:
        module = step.load()
        result = step.call(module, config, workdir, settings, quiet)
    except Exception as exc:   # any failure stops the pipeline with the step named
        return {**entry, "status": "failed", "seconds": round(time.time() - began, 2),
                "reason": f"{type(exc).__name__}: {exc}"}, exc
    return {**entry, "status": "ran", "seconds": round(time.time() - began, 2),
            "summary": result, "text": module.describe(result)}, None


def _notify(on_step, entry: dict) -> None:
    if on_step is not None:
        on_step(entry)


def describe_step(entry: dict) -> str:
    """One step's outcome as text: a header line, then the step's own summary when it ran."""
    head = f"[{entry['step']}] {entry['status']} in {entry['seconds']:.1f} s"
    if entry["status"] != "ran":
        return f"{head}: {entry['reason']}"
    return f"{head}\n" + "\n".join(f"    {line}" for line in entry["text"].splitlines())


def describe(summary: dict) -> str:
    """The closing lines of a run: per-step time and what happened."""
    rows = [f"  {e['step']:<11} {e['status']:<8} {e['seconds']:>7.1f} s" for e in summary["steps"]]
    lines = [f"Pipeline for '{summary['dataset']}' in {summary['seconds']:.1f} s "
             f"(workdir {summary['workdir']}):", *rows]
    if summary.get("report"):
        lines.append(f"Report: {summary['report']}")
    if summary.get("report_error"):
        lines.append(f"The report could not be written: {summary['report_error']}")
    return "\n".join(lines)


def run_and_report(config: DatasetConfig, workdir: Path, *, report: bool = True, **options) -> dict:
    """run_pipeline, then the HTML report (also after a failed step, to show what is there)."""
    try:
        summary = run_pipeline(config, workdir, **options)
    except StepFailed as failed:
        if report:
            _add_report(failed.summary, config, workdir)
        raise
    if report:
        _add_report(summary, config, workdir)
    return summary


def _add_report(summary: dict, config: DatasetConfig, workdir: Path) -> None:
    """Write the report into summary['report']; a report error is noted, never hides the run."""
    from curation.report import step as report_step

    try:
        summary["report"] = report_step.build_report(config, workdir)["report"]
    except Exception as exc:   # the steps' results stand even if the page cannot be drawn
        summary["report_error"] = f"{type(exc).__name__}: {exc}"


def failure_message(failed: StepFailed, command: str) -> str:
    """What to tell the user when a step fails: which step, why, and how to resume."""
    done = [e["step"] for e in failed.summary["steps"] if e["status"] in ("ran", "skipped")]
    kept = f"Finished steps ({', '.join(done)}) are kept. " if done else ""
    where = f" Partial report: {failed.summary['report']}." if failed.summary.get("report") else ""
    return (f"step '{failed.step}' failed: {type(failed.cause).__name__}: {failed.cause}\n"
            f"{kept}Fix the cause and run `{command}` again: it resumes at '{failed.step}'.{where}")
