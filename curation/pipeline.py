"""`curate run`: the registry's steps in one command, resumable.

Each step's settings are, per field: what this run was given, else (for settings that change
the result and are not taken from datasets.yaml) what the step recorded last time, else the
default. So a manual `curate dedupe --threshold 4` stays in force for later runs. A step is
skipped when the fingerprint of those settings and its current inputs equals the one in its
runs/<step>.json, whoever ran it (curation/steps.py), and its outputs are there. Scan always
runs: it is what notices changed files. Steps record their run only when they finish and write
files atomically, so a crash or Ctrl-C leaves the workdir consistent and the next run resumes
at the interrupted step.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from curation import cluster, registry
from curation.config import ConfigError, DatasetConfig
from curation.errors import ManifestUnreadable
from curation.manifest import ManifestMissing, read_manifest, read_run, workdir_lock
from curation.report import step as report_step
from curation.settings import record_of, result_keys, spec_of
from curation.steps import Step, execute, fingerprint, resolve_settings


class StepFailed(RuntimeError):
    """A pipeline step raised; the message names the step and how to resume."""

    def __init__(self, step: str, cause: BaseException, summary: dict):
        self.step, self.cause, self.summary = step, cause, summary
        super().__init__(f"step '{step}' failed: {cause}")


def steps_between(from_step: str | None, until: str | None) -> list[str]:
    """The steps from `from_step` to `until`, inclusive, in pipeline order."""
    names = registry.NAMES
    for name in (from_step, until):
        if name is not None and name not in names:
            raise ConfigError(f"unknown step '{name}' (steps: {', '.join(names)})")
    first = names.index(from_step) if from_step else 0
    last = names.index(until) if until else len(names) - 1
    if first > last:
        raise ConfigError(f"--from {from_step} comes after --until {until}")
    return list(names[first:last + 1])


def given_for(step: Step, settings: dict) -> dict:
    """The values `settings` gives this step: its own {step: {...}} entry over shared keys."""
    fields = {f.name for f in dataclasses.fields(step.settings)}
    shared = {k: v for k, v in settings.items() if k in fields and v is not None}
    own = {k: v for k, v in (settings.get(step.name) or {}).items() if v is not None}
    return {**shared, **own}


def check_keys(settings: dict) -> None:
    """Refuse a key that is neither a step name nor a setting of some step."""
    known = {f.name for step in registry.PIPELINE for f in dataclasses.fields(step.settings)}
    unknown = sorted(k for k in settings if k not in known and k not in registry.NAMES)
    if unknown:
        raise ConfigError(f"run: unknown setting(s) {unknown} (known: {', '.join(sorted(known))})")


def planned(step: Step, config: DatasetConfig, workdir: Path, given: dict):
    """The settings to run with: given values, else the recorded result-changing ones not bound
    to datasets.yaml, else defaults; plus the step's on_change ones when they differ from the
    recorded settings (split re-splits everything for another seed)."""
    last = (read_run(workdir, step.name) or {}).get("settings", {})
    keep = {f.name for f in dataclasses.fields(step.settings)
            if spec_of(f).result and spec_of(f).config is None}
    values = {**{k: v for k, v in last.items() if k in keep}, **given}
    settings = resolve_settings(step, config, values)
    now = record_of(settings)
    changed = bool(last) and any(last.get(k) != now[k] for k in result_keys(step.settings))
    if changed and step.on_change:
        settings = dataclasses.replace(settings, **step.on_change)
    return settings


def is_current(step: Step, settings, workdir: Path) -> str | None:
    """Why a step can be skipped, or None when it must run."""
    record = read_run(workdir, step.name)
    if not record or not record.get("fingerprint"):
        return None
    wanted = fingerprint(step, {**record_of(settings), **step.constants}, workdir,
                         _manifest_or_none(workdir))
    if wanted != record["fingerprint"]:
        return None
    if any(not (Path(workdir) / out).exists() for out in step.outputs):
        return None
    return f"unchanged since {record.get('finished', 'the last run')}"


def _manifest_or_none(workdir: Path) -> pd.DataFrame | None:
    try:
        return read_manifest(workdir)
    except (ManifestMissing, ManifestUnreadable):   # scan, which runs first, rebuilds it
        return None


def run_pipeline(config: DatasetConfig, workdir: Path, *, until: str | None = None,
                 from_step: str | None = None, settings: dict | None = None,
                 quiet: bool = False, on_step: Callable[[dict], None] | None = None,
                 leave_out: dict[str, str] | None = None) -> dict:
    """Run the steps in order, skipping the up-to-date ones; `from_step` forces a re-run from there.

    settings: {field: value} for every step that has the field, and {step: {field: value}} for
    one step (None values are ignored). leave_out: {step: reason} for steps not to run at all
    (shown as skipped, with the reason). on_step(entry) is called when a step starts (status
    'running') and when it ends (ran, skipped or failed). Raises StepFailed (with the partial
    summary) at the first step that fails.
    """
    workdir = Path(workdir)
    settings, leave_out = settings or {}, leave_out or {}
    check_keys(settings)
    names = steps_between(from_step, until)
    started = time.time()
    entries: list[dict] = []
    summary = {"dataset": config.name, "workdir": str(workdir.resolve()), "steps": entries,
               "from": from_step, "until": until}
    with workdir_lock(workdir / "runs"), cluster.kept():   # one Dask cluster for all the steps
        plans = {name: planned(registry.BY_NAME[name], config, workdir,   # all checked first
                               given_for(registry.BY_NAME[name], settings))
                 for name in names if name not in leave_out}
        for name in names:
            step, chosen = registry.BY_NAME[name], plans.get(name)
            forced = name == from_step or step.always
            reason = leave_out.get(name) or (None if forced else is_current(step, chosen, workdir))
            entry = {"step": name, "status": "skipped", "seconds": 0.0, "reason": reason}
            if reason is None:
                _notify(on_step, {"step": name, "status": "running"})
                entry, error = _run_step(step, chosen, config, workdir, quiet, entry)
            entries.append(entry)
            _notify(on_step, entry)
            if entry["status"] == "failed":
                summary["seconds"] = round(time.time() - started, 2)
                raise StepFailed(name, error, summary)
    summary["seconds"] = round(time.time() - started, 2)
    summary["ran"] = [e["step"] for e in entries if e["status"] == "ran"]
    summary["skipped"] = [e["step"] for e in entries if e["status"] == "skipped"]
    return summary


def _run_step(step: Step, settings, config, workdir, quiet, entry: dict):
    """(entry, None) when the step ran, (entry, exception) when it failed."""
    began = time.time()
    try:
        result = execute(step, settings, config, workdir, quiet=quiet)
    except Exception as exc:   # any failure stops the pipeline with the step named
        return {**entry, "status": "failed", "seconds": round(time.time() - began, 2),
                "reason": f"{type(exc).__name__}: {exc}"}, exc
    return {**entry, "status": "ran", "seconds": round(time.time() - began, 2),
            "summary": result, "text": step.describe(result)}, None


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
