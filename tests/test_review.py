"""`curate review`: build → a reviewer's actions through FiftyOne's API → --sync → split obeys,
re-runs that keep review tags, the embeddings map, and the App served and rendered."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from cli import main
from curation.config import DatasetConfig
from curation.dedupe.step import dedupe
from curation.review.fiftyone_db import free_port, import_fiftyone, port_in_use, temporary_database
from curation.manifest import read_manifest, read_run, record_run, write_manifest
from curation.review.step import describe, review, sync, wait_for_http
from curation.review.dataset import MAP_KEY, WORKSPACE, compute_map
from curation.scan.step import scan
from tests.conftest import killed_on_exit

MAGENTA = (255, 0, 255)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """FiftyOne on a private mongod in a temp folder, with a unique database name."""
    with temporary_database(tmp_path_factory.mktemp("fo-db")):
        yield import_fiftyone()


@pytest.fixture
def flagged(tmp_path, class_tree, monkeypatch):
    """A scanned class tree (3 × 4 images + one broken file) with dedupe and flag-noise columns."""
    monkeypatch.delenv("CURATE_FO_DB_DIR", raising=False)
    (class_tree / "alpha" / "broken.jpg").write_bytes(b"not an image")
    config = DatasetConfig(name="toy", root=class_tree)
    workdir = tmp_path / "work"
    scan(config, workdir, quiet=True)
    manifest = read_manifest(workdir)            # rows sorted by path: alpha/0..3, alpha/broken,
    n = len(manifest)                            # beta/0..3, gamma/0..3
    manifest["given_split"] = ["train", "test"] * (n // 2) + ["train"] * (n % 2)
    manifest["dup_group"] = pd.array([0, 0] + [None] * (n - 2), dtype="Int64")
    manifest["dup_keeper"] = pd.array([True, False] + [None] * (n - 2), dtype="boolean")
    manifest["noise_score"] = np.linspace(0, 1, n)
    flag = manifest["path"].isin(["beta/3.jpg", "gamma/3.jpg"])
    manifest["noise_flag"] = flag
    manifest["noise_reason"] = np.where(flag, "mislabel", None)
    manifest["suggested_label"] = np.where(flag, "alpha", None)
    write_manifest(manifest, workdir)
    return config, workdir


def _tag(dataset, path, *tags):
    dataset.select_by("path", [path]).tag_samples(list(tags))


def test_build_review_sync_round_trip_and_split_obeys(fo, flagged):
    config, workdir = flagged
    summary = review(config, workdir, launch=False, map_method="none", fo_dataset="round-trip")
    assert summary["samples"] == 12 and summary["added"] == 12     # the broken file has no sample
    assert summary["flags"] == {"duplicate": 1, "non_car": 0, "mislabel": 2, "outlier": 0}
    dataset = fo.load_dataset("round-trip")
    sample = dataset.one(fo.ViewField("path") == "alpha/1.jpg")
    assert sample.filepath == str(config.root / "alpha/1.jpg") and os.path.isfile(sample.filepath)
    assert sample.ground_truth.label == "alpha" and sample.tags == ["duplicate"]
    assert sample.leaks_given_split and sample.metadata.width == 160
    assert sample.duplicate_group.label == "group 0"
    flagged_view = dataset.load_saved_view("flagged by score")
    assert flagged_view.values("path") == ["gamma/3.jpg", "beta/3.jpg", "alpha/1.jpg"]
    assert dataset.load_saved_view("duplicate groups").values("path") == ["alpha/0.jpg", "alpha/1.jpg"]
    assert len(dataset.load_saved_view("groups crossing splits")) == 2

    # the reviewer, through FiftyOne's Python API (what the App's tag button does)
    _tag(dataset, "alpha/1.jpg", "drop")
    _tag(dataset, "beta/3.jpg", "relabel")                  # accept flag-noise's suggestion
    _tag(dataset, "gamma/3.jpg", "keep")                    # flagged, but fine
    _tag(dataset, "gamma/0.jpg", "relabel:BETA")            # any case of a class name
    _tag(dataset, "gamma/1.jpg", "drop", "keep")            # contradiction: nothing recorded
    edited = dataset.one(fo.ViewField("path") == "beta/0.jpg")
    edited.ground_truth.label = "gamma"
    edited.save()

    synced = sync(config, workdir, fo_dataset="round-trip")
    assert synced["decisions"] == {"keep": 1, "drop": 1, "relabel": 3} and synced["changed"] == 5
    assert [p["path"] for p in synced["problems"]] == ["gamma/1.jpg"]
    assert len(dataset.load_saved_view("review problems")) == 1
    manifest = read_manifest(workdir).set_index("path")
    expected = {"alpha/1.jpg": ("drop", None), "beta/3.jpg": ("relabel", "alpha"),
                "gamma/3.jpg": ("keep", None), "gamma/0.jpg": ("relabel", "beta"),
                "beta/0.jpg": ("relabel", "gamma")}
    for path, (decision, label) in expected.items():
        assert manifest.loc[path, "review_decision"] == decision
        assert (pd.isna(manifest.loc[path, "review_label"]) if label is None
                else manifest.loc[path, "review_label"] == label)
    assert manifest["review_decision"].notna().sum() == 5
    assert read_run(workdir, "review-sync")["summary"]["decisions"]["relabel"] == 3
    assert "relabel beta/0.jpg -> gamma" in describe(synced)

    split_step = pytest.importorskip("curation.split.step")
    split_step.split(config, workdir, quiet=True)
    after = read_manifest(workdir).set_index("path")
    assert after.loc["alpha/1.jpg", "split"] == "excluded"
    assert after.loc["alpha/1.jpg", "split_excluded_by"] == "dropped"
    assert after.loc["gamma/0.jpg", "split_label"] == "beta"
    assert after.loc["beta/0.jpg", "split_label"] == "gamma"
    assert after.loc["gamma/3.jpg", "split"] != "excluded"      # kept despite its noise flag


def test_rerun_updates_in_place_and_a_new_dataset_starts_from_the_manifest(fo, flagged):
    config, workdir = flagged
    review(config, workdir, launch=False, map_method="none", fo_dataset="rerun")
    dataset = fo.load_dataset("rerun")
    _tag(dataset, "beta/3.jpg", "relabel:gamma")
    _tag(dataset, "alpha/2.jpg", "drop")
    sync(config, workdir, fo_dataset="rerun")
    ids = dict(zip(*dataset.values(["path", "id"])))

    manifest = read_manifest(workdir)
    manifest.loc[manifest["path"] == "beta/3.jpg", "noise_flag"] = False   # flag-noise changed
    write_manifest(manifest[manifest["path"] != "gamma/2.jpg"], workdir)   # an image left
    summary = review(config, workdir, launch=False, map_method="none", fo_dataset="rerun")
    assert (summary["added"], summary["updated"], summary["removed"]) == (0, 11, 1)
    assert summary["decided"] == {"keep": 0, "drop": 1, "relabel": 1}
    tags = dict(zip(*dataset.values(["path", "tags"])))
    assert tags["beta/3.jpg"] == ["relabel:gamma"]        # reviewer's tag kept, stale flag gone
    assert tags["gamma/3.jpg"] == ["mislabel"] and tags["alpha/2.jpg"] == ["drop"]
    assert dict(zip(*dataset.values(["path", "id"]))) == {p: i for p, i in ids.items()
                                                         if p != "gamma/2.jpg"}

    review(config, workdir, launch=False, map_method="none", fo_dataset="fresh")
    fresh = dict(zip(*fo.load_dataset("fresh").values(["path", "tags"])))
    assert fresh["beta/3.jpg"] == ["relabel:gamma"] and fresh["alpha/2.jpg"] == ["drop"]


def test_embeddings_map_from_the_flag_noise_cache_is_computed_once(fo, flagged):
    embed = pytest.importorskip("curation.embed.cache")
    config, workdir = flagged
    manifest = read_manifest(workdir)
    readable = manifest[manifest["readable"]].reset_index(drop=True)
    centres = {"alpha": 0.0, "beta": 6.0, "gamma": 12.0}
    rng = np.random.default_rng(0)
    vectors = np.stack([rng.normal(centres[label], 1.0, size=32) for label in readable["label"]])
    cache = workdir / "embeddings" / "made-by-flag-noise.npz"   # what flag-noise leaves behind
    embed.write_cache(cache, readable[["path", "bytes", "mtime"]], vectors)
    record_run(workdir, "flag-noise", settings={}, started=time.time(),
               summary={"embeddings": {"cache_file": str(cache)}})

    summary = review(config, workdir, launch=False, map_method="tsne", fo_dataset="mapped")
    assert summary["map"] == MAP_KEY and summary["map_samples"] == 12 and not summary["map_reused"]
    dataset = fo.load_dataset("mapped")
    results = dataset.load_brain_results(MAP_KEY)
    labels = dict(zip(*dataset.values(["id", "given_label"])))
    classes = np.array([labels[i] for i in results.current_sample_ids])
    points = results.current_points
    nearest = np.argsort(((points[:, None] - points[None]) ** 2).sum(-1), axis=1)[:, 1]
    assert points.shape == (12, 2) and (classes[nearest] == classes).mean() >= 0.9
    assert dataset.has_workspace(WORKSPACE)
    again = review(config, workdir, launch=False, map_method="tsne", fo_dataset="mapped")
    assert again["map_reused"]
    assert not review(config, workdir, launch=False, map_method="pca",
                      fo_dataset="mapped")["map_reused"]
    assert compute_map(fo, dataset, None, "pca", seed=0)["map"] is None


def test_cli_no_launch_and_sync_print_json(flagged, tmp_path):
    config, workdir = flagged
    runner = CliRunner()
    common = [str(config.root), "--workdir", str(workdir), "--db-dir", str(tmp_path / "cli-db"),
              "--fo-dataset", "cli", "--json"]
    built = runner.invoke(main, ["review", *common, "--no-launch", "--map-method", "none"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["samples"] == 12
    synced = runner.invoke(main, ["review", *common, "--sync"])
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.stdout)["decisions"] == {"keep": 0, "drop": 0, "relabel": 0}
    missing = runner.invoke(main, ["review", *common[:-3], "--fo-dataset", "nope", "--sync"])
    assert missing.exit_code == 1 and "curate review data --no-launch" in missing.output


@pytest.mark.real_data
@pytest.mark.slow
def test_round_trip_on_real_photos(fo, curate_data, tmp_path):
    root = curate_data / "swift-wagonr"
    config = DatasetConfig(name="swift-wagonr", root=root)
    workdir = tmp_path / "work"
    scan(config, workdir, quiet=True)
    dedupe(config, workdir, quiet=True)
    summary = review(config, workdir, launch=False, map_method="none", fo_dataset="real")
    assert summary["samples"] == 300
    dataset = fo.load_dataset("real")
    assert summary["flags"]["duplicate"] > 0           # its train/test folders share near-copies
    assert len(dataset.load_saved_view("groups crossing splits")) > 0
    first, second = dataset.match(fo.ViewField("given_label") == "swift").limit(2).values("path")
    _tag(dataset, first, "drop")
    _tag(dataset, second, "relabel:wagonr")
    assert sync(config, workdir, fo_dataset="real")["decisions"] == {"keep": 0, "drop": 1,
                                                                    "relabel": 1}
    pytest.importorskip("curation.split.step").split(config, workdir, quiet=True)
    after = read_manifest(workdir).set_index("path")
    assert after.loc[first, "split"] == "excluded" and after.loc[second, "split_label"] == "wagonr"


# ---- the App -----------------------------------------------------------------------------------

def _magenta_tree(root):
    """Images that are mostly pure magenta, a colour the App's own interface never shows."""
    for c, label in enumerate(["alpha", "beta"]):
        for i in range(4):
            image = Image.new("RGB", (160, 120), MAGENTA)
            ImageDraw.Draw(image).rectangle([20 + 10 * i, 40, 100 + 10 * c, 80], fill=(30, 30, 30))
            (root / label).mkdir(parents=True, exist_ok=True)
            image.save(root / label / f"{i}.jpg")
    return root


def _screenshot(url, out, profile):
    """Headless Chromium's PNG of url, or None with the reason it could not run."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None, "chromium is not installed (apt-get install -y chromium)"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,800",
               "--virtual-time-budget=15000", f"--screenshot={out}", url]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return None, "chromium did not finish in 180 s"
    if not out.is_file():
        return None, f"chromium could not run: {result.stderr.strip()[-300:]}"
    return out, None


@pytest.mark.slow
def test_app_serves_the_grid_and_stops_on_ctrl_c(tmp_path):
    root = _magenta_tree(tmp_path / "data")
    workdir, db = tmp_path / "work", tmp_path / "db"
    scan(DatasetConfig(name="data", root=root), workdir, quiet=True)
    port = free_port()
    env = {**os.environ, "CURATE_FO_DB_DIR": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "review", str(root), "--workdir", str(workdir), "--db-dir",
         str(db), "--port", str(port), "--fo-dataset", "app-smoke", "--map-method", "none"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    lines, ready = [], threading.Event()

    def read_stderr():
        for line in process.stderr:
            lines.append(line)
            if "FiftyOne App: http" in line:
                ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    with killed_on_exit(process):
        assert ready.wait(240), "".join(lines)
        url = re.search(r"FiftyOne App: (\S+)", "".join(lines)).group(1)
        assert url == f"http://127.0.0.1:{port}/datasets/app-smoke"
        assert wait_for_http(url, timeout=30) == 200
        shot, reason = _screenshot(url, tmp_path / "app.png", tmp_path / "chromium")
        if shot is not None:
            pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
            magenta = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] > 200)
            assert magenta.mean() > 0.05, f"no sample grid in {shot} ({magenta.mean():.3f})"
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(lines)
    assert f"App served at {url}" in stdout
    assert not port_in_use(port) and not (db / "curate-mongod.json").exists()
    if shot is None:
        pytest.skip(f"App served HTTP 200 and stopped cleanly; no screenshot: {reason}")
