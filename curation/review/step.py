"""`curate review`: the flagged images in the FiftyOne App, and the reviewer's decisions brought back.

`review` builds or updates the FiftyOne dataset (review_dataset) and serves the App until Ctrl-C;
`sync` reads the reviewer's tags and edited labels back into the manifest columns
`review_decision` (keep / drop / relabel) and `review_label` (rules in review_tags).
"""
from __future__ import annotations

import contextlib
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from curation.config import ConfigError, DatasetConfig
from curation.errors import CurateError
from curation.review.fiftyone_db import (dataset_name, fiftyone_database, import_fiftyone,
                                         port_in_use, resolve_db_dir)
from curation.manifest import DEDUPE_COLUMNS, NOISE_COLUMNS, REVIEW_COLUMNS
from curation.review.dataset import (MAP_METHODS, WORKSPACE, build_dataset, compute_map,
                                     load_embeddings, resolve_map_method, save_problem_view,
                                     save_views)
from curation.review.tags import DECISIONS, FLAG_TAGS, read_decisions
from curation.settings import setting
from curation.steps import Step, Workdir, execute, resolve_settings, run_step

DEFAULT_PORT = 5151
DEFAULT_ADDRESS = "127.0.0.1"
LISTED = 20


# ---- the App --------------------------------------------------------------------------------

class AppTimeout(CurateError, TimeoutError):
    """The FiftyOne App did not answer in time."""


def app_url(host: str, port: int, name: str, view_slug: str | None = None) -> str:
    """The App's URL for a dataset (and saved view)."""
    url = f"http://{host}:{port}/datasets/{urllib.parse.quote(name)}"
    return url + (f"?view={urllib.parse.quote(view_slug)}" if view_slug else "")


def wait_for_http(url: str, timeout: float = 120) -> int:
    """Poll url until it answers; returns the HTTP status (TimeoutError after timeout seconds)."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.time() > deadline:
                raise AppTimeout(f"the FiftyOne App did not answer at {url} in {timeout:.0f} s")
            time.sleep(0.5)


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """Ctrl-C and SIGTERM both end the App the clean way, also where a shell ignores SIGINT."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_app(fo, dataset, *, address: str, port: int, announce: Callable[[str], None]) -> dict:
    """Serve the App (the grid-and-map workspace when there is a map) until Ctrl-C."""
    from fiftyone.core.utils import to_slug

    spaces = dataset.load_workspace(WORKSPACE) if dataset.has_workspace(WORKSPACE) else None
    session = fo.launch_app(dataset, spaces=spaces, remote=True, address=address, port=port,
                            auto=False)
    opened = time.time()
    wildcard = address in ("0.0.0.0", "::", "")
    host = socket.gethostname() if wildcard else address      # what another machine types
    url = app_url(host, port, dataset.name)
    try:
        with _stoppable():
            wait_for_http(app_url("127.0.0.1" if wildcard else address, port, dataset.name))
            views = [f"  {v}: {app_url(host, port, dataset.name, to_slug(v))}"
                     for v in dataset.list_saved_views()]
            announce("\n".join([f"FiftyOne App: {url}", *views,
                                "Tag images keep / drop / relabel:<class> (relabel alone takes "
                                "the suggested label), then run `curate review DATASET --sync`.",
                                "Ctrl-C stops the App."]))
            session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return {"url": url, "app_seconds": round(time.time() - opened, 1)}


# ---- the steps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncSettings:
    """Where the reviewed FiftyOne dataset is."""

    fo_dataset: str | None = setting(None, "FiftyOne dataset name [env CURATE_FO_DATASET; "
                                     "default: curate-<dataset>].", kind=str)
    db_dir: Path | None = setting(None, "Keep the FiftyOne database in this folder, served by a "
                                  "private mongod [env CURATE_FO_DB_DIR; default: FiftyOne's "
                                  "own database].", path="dir")


@dataclass(frozen=True)
class Settings(SyncSettings):
    """What `curate review` can be told about the dataset it builds."""

    map_method: str = setting("auto", "2-D map of the cached embeddings (auto: umap if "
                              "umap-learn is installed, else tsne).", choices=MAP_METHODS)
    seed: int = setting(0, "Seed of the 2-D map.")


def build(work: Workdir, settings: Settings) -> dict:
    """Build or update the review dataset from the manifest (inside the live database)."""
    fo, where = work.context["fo"], work.context["where"]
    name = dataset_name(work.config.name, settings.fo_dataset)
    method = resolve_map_method(settings.map_method)
    manifest = work.read()
    dataset, counts = build_dataset(fo, name, manifest, work.root.resolve())
    views = save_views(fo, dataset)
    embeddings = None if method == "none" else load_embeddings(work, manifest)
    mapped = compute_map(fo, dataset, embeddings, method, settings.seed,
                         announce=work.context.get("announce"))
    tags = dataset.count_sample_tags()
    work.derived.update(dataset=name, map_method=method)
    return {"dataset": name, "database": where, **counts, "flags": _tag_counts(tags),
            "decided": _decision_counts(tags), "views": views, **mapped,
            "seconds": round(time.time() - work.started, 2)}


def review(config: DatasetConfig, workdir: Path, *, launch: bool = True,
           address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT, quiet: bool = False,
           announce: Callable[[str], None] = print, **settings) -> dict:
    """Build or update the review dataset, then serve the App unless not launch (see Settings)."""
    resolved = resolve_settings(REVIEW, config, settings)
    if launch and port_in_use(port, address):
        raise ConfigError(f"port {port} on {address} is already in use (another FiftyOne App?): "
                          f"choose a free one with --port")
    with fiftyone_database(resolve_db_dir(resolved.db_dir)) as where:
        fo = import_fiftyone()
        fo.config.show_progress_bars = not quiet
        context = {"fo": fo, "where": where, "announce": None if quiet else announce}
        summary = execute(REVIEW, resolved, config, workdir, quiet=quiet, context=context)
        if launch:
            announce(describe(summary))
            summary.update(serve_app(fo, fo.load_dataset(summary["dataset"]), address=address,
                                     port=port, announce=announce))
    return summary


def take_decisions(work: Workdir, settings: SyncSettings) -> dict:
    """Write the reviewer's decisions from the FiftyOne dataset into the manifest."""
    config, name = work.config, dataset_name(work.config.name, settings.fo_dataset)
    with fiftyone_database(resolve_db_dir(settings.db_dir)) as where:
        fo = import_fiftyone()
        fo.config.show_progress_bars = not work.quiet
        if not fo.dataset_exists(name):
            raise ConfigError(f"no FiftyOne dataset {name!r} in {where}: run "
                              f"`curate review {config.name} --no-launch` first (same --db-dir "
                              f"and --fo-dataset)")
        dataset = fo.load_dataset(name)
        manifest = work.read()
        samples = pd.DataFrame(dict(zip(
            ["path", "tags", "current_label", "given_label", "suggested_label"],
            dataset.values(["path", "tags", "ground_truth.label", "given_label",
                            "suggested_label.label"]))))
        classes = config.classes or sorted(manifest["label"].dropna().unique())
        decided = read_decisions(samples, classes)
        decided = decided[decided["path"].isin(manifest["path"])]
        before = _review_columns(manifest)
        after = before.set_index("path")
        after.loc[decided["path"], REVIEW_COLUMNS] = decided.set_index("path")[REVIEW_COLUMNS]
        after = after.reset_index()
        work.merge(manifest, after)
        problems = decided[decided["review_problem"].notna()]
        save_problem_view(dataset, problems["path"].tolist())
        work.derived.update(dataset=name, classes=list(classes))
        return _sync_summary(name, where, before, after, problems,
                             unsynced=int((~manifest["path"].isin(samples["path"])).sum()),
                             seconds=time.time() - work.started)


def sync(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate review --sync` as a function: see SyncSettings for the keyword arguments."""
    return run_step(SYNC, config, workdir, quiet=quiet, **settings)


def _review_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """path + the manifest's review columns (all null before the first sync)."""
    frame = pd.DataFrame({"path": manifest["path"]})
    for column in REVIEW_COLUMNS:
        frame[column] = (manifest[column] if column in manifest.columns else pd.NA)
    return frame.astype({c: "string" for c in REVIEW_COLUMNS}).reset_index(drop=True)


def _sync_summary(name, where, before, after, problems, *, unsynced, seconds) -> dict:
    changed = (before[REVIEW_COLUMNS].fillna("") != after[REVIEW_COLUMNS].fillna("")).any(axis=1)
    relabels = after[after["review_decision"] == "relabel"]
    return {"synced": True, "dataset": name, "database": where,
            "decisions": {d: int((after["review_decision"] == d).sum()) for d in DECISIONS},
            "changed": int(changed.sum()),
            "relabels": {p: lbl for p, lbl in zip(relabels["path"][:LISTED], relabels["review_label"])},
            "problems": [{"path": p, "problem": m} for p, m in
                         zip(problems["path"], problems["review_problem"])],
            "not_in_dataset": unsynced, "seconds": round(seconds, 2)}


def _tag_counts(tags: dict) -> dict:
    """Samples per flag tag, from dataset.count_sample_tags()."""
    return {tag: int(tags.get(tag, 0)) for tag in FLAG_TAGS}


def _decision_counts(tags: dict) -> dict:
    """Samples per reviewer decision (relabel:<class> counts as relabel), from count_sample_tags()."""
    counts = Counter()
    for tag, n in tags.items():
        word = tag.lower().split(":")[0]
        if word in DECISIONS:
            counts[word] += n
    return {d: counts[d] for d in DECISIONS}


def describe(summary: dict) -> str:
    """A short human summary of a review build (and App session) or of a sync."""
    if summary.get("synced"):
        decisions = ", ".join(f"{k} {v}" for k, v in summary["decisions"].items())
        lines = [f"Synced review decisions from FiftyOne dataset '{summary['dataset']}' into the "
                 f"manifest: {decisions} ({summary['changed']} changed) in {summary['seconds']} s."]
        lines += [f"  relabel {p} -> {lbl}" for p, lbl in summary["relabels"].items()]
        if summary["problems"]:
            lines.append(f"{len(summary['problems'])} images have unreadable review tags (no "
                         f"decision recorded; see the saved view 'review problems'):")
            lines += [f"  {p['path']}: {p['problem']}" for p in summary["problems"][:LISTED]]
        if summary["not_in_dataset"]:
            lines.append(f"{summary['not_in_dataset']} manifest rows have no sample "
                         f"(unreadable, or new since the last build); their decisions are kept.")
        return "\n".join(lines)
    action = "Created" if summary["created"] else "Updated"
    flags = ", ".join(f"{k} {v}" for k, v in summary["flags"].items())
    decided = ", ".join(f"{k} {v}" for k, v in summary["decided"].items())
    lines = [f"{action} FiftyOne dataset '{summary['dataset']}' in {summary['database']}: "
             f"{summary['samples']} samples ({summary['added']} added, {summary['updated']} "
             f"updated, {summary['removed']} removed) in {summary['seconds']} s.",
             f"flags: {flags}; reviewer decisions so far: {decided}",
             "saved views: " + ", ".join(summary["views"])]
    if summary.get("map"):
        reused = " (unchanged, reused)" if summary.get("map_reused") else ""
        lines.append(f"embeddings map: {summary['map_method']} over {summary['map_samples']} "
                     f"images{reused}; open the Embeddings panel, brain key '{summary['map']}'")
    else:
        lines.append(f"no embeddings map: {summary['map_reason']}")
    if "url" in summary:
        lines.append(f"App served at {summary['url']} for {summary['app_seconds']} s.")
    return "\n".join(lines)


REVIEW = Step("review", Settings, build, describe, needs=("path", "label", "readable"),
              uses=("given_split", "split", *DEDUPE_COLUMNS, *NOISE_COLUMNS))
SYNC = Step("review-sync", SyncSettings, take_decisions, describe, needs=("path", "label"),
            adds=tuple(REVIEW_COLUMNS))
