"""Benchmark `curate check` / `curate serve`: verdict quality on real photos, and a bounded
load test of the HTTP API on 127.0.0.1.

Quality (in process, the library the API calls), on a workdir where `curate run DATASET --until
evaluate` has run (model in <workdir>/model, hashes from dedupe):
- swapped claims: the test photos, 20 % claimed as another random class (no catalogue, so
  re-use does not hide a verdict): wrong_model recall on swapped claims, false alarms on true;
- non-car: every $CURATE_DATA/non-car photo under a random claimed class: not_a_car recall;
- re-used: an edited copy (dedupe's planted edits: resize, JPEG, crop, brightness, text,
  mirror, plus exact copies) of catalogue photos, against the catalogue of the train and val
  photos: duplicate recall, and matched recall (the lookup found the right photo, whatever
  the verdict); how many test photos that re-use nothing are called duplicate; and how many
  catalogue photos match a different catalogue photo (looked up in the others, by folds).
Load: starts `curate serve` on a free 127.0.0.1 port with the train+val catalogue as its index
(so each upload, a test photo, goes through the whole lookup: no byte-identical shortcut),
sends a fixed number of checks from a few concurrent clients, then the bad-input list
(training/bad_inputs.py), and stops it.
Prints one JSON object. Example:
    CURATE_DATA=../shared/data python bench/serve_bench.py --dataset swift-wagonr --workdir /tmp/sw
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from curation.config import resolve_dataset
from curation.dedupe.evaluation import plant
from curation.embed.engines import ENGINES
from curation.images import image_files
from curation.manifest import read_manifest, write_manifest
from curation.review.fiftyone_db import free_port
from curation.review.step import wait_for_http
from training.bad_inputs import probe
from training.catalogue import build_catalogue
from training.check import Checker, assign_verdicts
from training.check import swapped_claims as all_swaps
from training.claims import check_files
from training.data import encode_labels, label_series
from training.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"wrong_model_recall": 0.9, "wrong_model_false_alarm_max": 0.02, "non_car_recall": 0.98,
           "reused_recall": 0.95, "checks_per_second": 40, "p99_seconds": 1.0}


def verdict_counts(results: list[dict]) -> dict:
    return pd.Series([r["verdict"] for r in results]).value_counts().to_dict()


def swapped_claims(checker: Checker, rows: pd.DataFrame, root: Path, rng, share: float) -> dict:
    """wrong_model recall on swapped claims and false alarms on true ones: for a draw with
    `share` of the claims swapped, and over every photo claimed as every class (exhaustive)."""
    classes, calibration = checker.classes, checker.predictor.calibration
    uploads = [checker.read(p, (root / p).read_bytes()) for p in rows["path"]]
    good = [i for i, u in enumerate(uploads) if u.error is None]
    probs, distances = checker.predictor.scores_in_memory(np.stack([uploads[i].pixels
                                                                    for i in good]))
    y = encode_labels(rows["label"].to_numpy()[good], classes)

    def verdicts(index: np.ndarray, claims: np.ndarray) -> np.ndarray:
        return np.array(assign_verdicts(probs[index], distances[index], claims,
                                        np.zeros(len(index), bool), calibration, checker.rule))

    swapped = rng.random(len(y)) < share
    others = (y + rng.integers(1, len(classes), len(y))) % len(classes)
    drawn = verdicts(np.arange(len(y)), np.where(swapped, others, y))
    every_row, every_claim = all_swaps(y, len(classes))
    true_verdicts, swap_verdicts = verdicts(np.arange(len(y)), y), verdicts(every_row, every_claim)
    return {"photos": len(y), "undecodable": len(rows) - len(good),
            "draw": {"swapped": int(swapped.sum()),
                     "wrong_model_recall": _share(drawn[swapped] == "wrong_model"),
                     "wrong_model_false_alarm": _share(drawn[~swapped] == "wrong_model")},
            "exhaustive": {"swapped_claims": len(every_row),
                           "wrong_model_recall": _share(swap_verdicts == "wrong_model"),
                           "flagged_any_on_swapped": _share(swap_verdicts != "ok"),
                           "wrong_model_false_alarm": _share(true_verdicts == "wrong_model")},
            "verdicts_on_true_claims": pd.Series(true_verdicts).value_counts().to_dict()}


def _share(mask: np.ndarray) -> float | None:
    return round(float(np.mean(mask)), 4) if len(mask) else None


def non_car(checker: Checker, folder: Path, rng) -> dict:
    paths = image_files(folder)
    claims = [(p, str(rng.choice(checker.classes))) for p in paths]
    results = check_files(checker, claims)["results"]
    return {"photos": len(paths), "not_a_car_recall": round(float(np.mean(
        [r["verdict"] == "not_a_car" for r in results])), 4), "verdicts": verdict_counts(results)}


def reused(checker: Checker, catalogue_rows: pd.DataFrame, test_rows: pd.DataFrame, root: Path,
           count: int, seed: int) -> dict:
    """duplicate recall on edited copies of catalogue photos, and the catalogue lookup's own
    recall (the right photo found, whatever the verdict); false duplicates on test photos
    that re-use no catalogue photo (by dedupe's groups)."""
    picked = catalogue_rows.sample(min(count, len(catalogue_rows)), random_state=seed)
    with tempfile.TemporaryDirectory() as scratch:
        planted = plant([root / p for p in picked["path"]], Path(scratch), seed=seed)
        copies = planted[planted["transform"] != "original"].reset_index(drop=True)
        labels = picked["label"].to_numpy()[copies["family"].to_numpy()]
        results = check_files(checker, list(zip(map(Path, copies["path"]), labels)))["results"]
    hit = pd.Series([r["verdict"] == "duplicate" for r in results])
    groups = catalogue_rows.set_index("path")["dup_group"]
    originals = picked["path"].to_numpy()[copies["family"].to_numpy()]
    matched = pd.Series([same_photo(r.get("duplicate_of"), original, groups)
                         for r, original in zip(results, originals)])
    fresh = test_rows[~test_rows["reuses_catalogue"]]
    fresh_results = check_files(checker, [(root / p, c) for p, c in
                                          zip(fresh["path"], fresh["label"])])["results"]
    return {"copies": len(copies), "reused_recall": round(float(hit.mean()), 4),
            "recall_by_edit": hit.groupby(copies["transform"]).mean().round(4).to_dict(),
            "matched_recall": round(float(matched.mean()), 4),
            "matched_by_edit": matched.groupby(copies["transform"]).mean().round(4).to_dict(),
            "matched_how": pd.Series([_how(r) for r in results]).value_counts().to_dict(),
            "verdicts": verdict_counts(results),
            "fresh_test_photos": len(fresh),
            "fresh_called_duplicate": round(float(np.mean(
                [r["verdict"] == "duplicate" for r in fresh_results])), 4),
            "fresh_matched": sum(r.get("duplicate_of") is not None for r in fresh_results)}


def same_photo(match: dict | None, original: str, groups: pd.Series) -> bool:
    """Whether the catalogue lookup found `original`, or a photo dedupe grouped with it."""
    if match is None:
        return False
    found, wanted = groups.get(match["path"]), groups.get(original)
    return match["path"] == original or bool(pd.notna(wanted) and pd.notna(found)
                                             and found == wanted)


def _how(result: dict) -> str:
    match = result.get("duplicate_of")
    return "none" if match is None else match["how"].rstrip("0123456789. ")


def catalogue_false_matches(checker: Checker, catalogue_rows: pd.DataFrame, root: Path,
                            folds: int = 5) -> dict:
    """Every catalogue photo looked up in the catalogue less its fold (so not in itself): the
    photos it matches that dedupe did not group with it are false matches (or copies dedupe
    missed: listed to be looked at)."""
    catalogue = checker.catalogue
    groups = catalogue_rows.set_index("path")["dup_group"]
    fold = np.arange(len(catalogue)) % folds
    found = []
    for k in range(folds):
        rows = np.flatnonzero(fold == k)
        uploads = [checker.read(p, (root / p).read_bytes()) for p in catalogue.paths[rows]]
        good = [u for u in uploads if u.error is None]
        matches = catalogue.without(rows).match([u.hashes for u in good],
                                                [u.sha256 for u in good],
                                                [u.crops for u in good],
                                                [u.picture for u in good])
        found += [(u.name, m) for u, m in zip(good, matches)
                  if m is not None and not same_photo(m, u.name, groups)]
    return {"photos": len(catalogue), "folds": folds, "false_matches": len(found),
            "pairs": [{"photo": name, "matched": m["path"], "how": m["how"],
                       "distance": m["distance"]} for name, m in found]}


def model_only_rate(predictor: Predictor, pixels: np.ndarray, seconds: float = 10.0) -> float:
    """Photos/s of the model alone (decoded pixels, flip-averaged, one batch of pixels per
    call) in this process: the ceiling the server's rate is compared with under the same load."""
    predictor.warm_up(len(pixels))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.scores_in_memory(pixels)
        done += len(pixels)
    return round(done / (time.perf_counter() - started), 1)


def load_test(model_dir: Path, index: str, index_workdir: Path, payloads: list, *,
              requests: int, clients: int, timeout: float) -> dict:
    """Start `curate serve`, send `requests` checks from `clients` threads, probe bad inputs."""
    port, max_bytes = free_port(), 20_000_000
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", str(model_dir), "--index", index,
         "--index-workdir", str(index_workdir), "--port", str(port), "--timeout", str(timeout)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_for_http(f"{url}/health", timeout=300) != 200:
            raise RuntimeError("the server did not come up")
        latencies, statuses = [], []

        def client(share: range) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                for k in share:
                    data, label = payloads[k % len(payloads)]
                    started = time.perf_counter()
                    try:
                        status = http.post("/check", files={"image": ("p.jpg", data)},
                                           data={"claimed_label": label}).status_code
                    except httpx.HTTPError:
                        status = None
                    latencies.append(time.perf_counter() - started)
                    statuses.append(status)

        load = os.getloadavg()[0]
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(range(c, requests, clients),))
                   for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        health = httpx.get(f"{url}/health").json()
        bad = probe(url, payloads[0][0], payloads[0][1], max_bytes=max_bytes, timeout=timeout)
        alive = process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    ms = np.array(latencies)
    return {"requests": requests, "clients": clients, "seconds": round(seconds, 2),
            "checks_per_second": round(requests / seconds, 1),
            "p50_seconds": round(float(np.quantile(ms, 0.5)), 3),
            "p95_seconds": round(float(np.quantile(ms, 0.95)), 3),
            "p99_seconds": round(float(np.quantile(ms, 0.99)), 3),
            "errors": sum(s != 200 for s in statuses),
            "mean_batch": round(health["photos"] / max(health["batches"], 1), 2),
            "load_average_1min_before": round(load, 2), "cpu_cores": len(os.sched_getaffinity(0)),
            "bad_inputs": bad, "bad_inputs_all_ok": all(r["ok"] for r in bad),
            "server_errors": sum(1 for r in bad if (r["status"] or 0) >= 500),
            "server_alive_after": alive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--workdir", type=Path, required=True,
                        help="workdir where `curate run DATASET --until evaluate` ran")
    parser.add_argument("--swap-share", type=float, default=0.2)
    parser.add_argument("--reused", type=int, default=300, help="catalogue photos to copy")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--no-load", action="store_true", help="quality only")
    parser.add_argument("--no-thumbnails", action="store_true",
                        help="catalogue index without thumbnails: the hash rules only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = resolve_dataset(args.dataset)
    rng = np.random.default_rng(args.seed)
    manifest = read_manifest(args.workdir)
    manifest = manifest[manifest["readable"].astype(bool)].assign(label=label_series(manifest))
    manifest = manifest[manifest["label"].notna() & manifest["split"].notna()]
    catalogue_rows = manifest[manifest["split"].isin(["train", "val"])]
    groups = set(catalogue_rows["dup_group"].dropna())
    test_rows = manifest[manifest["split"] == "test"].assign(
        reuses_catalogue=lambda t: t["dup_group"].isin(groups) & t["dup_group"].notna())
    checker = Checker(args.workdir / "model")
    out = {"dataset": args.dataset, "model_dir": str(args.workdir / "model"),
           "wrong_model_rule": {k: v for k, v in checker.rule.items() if k != "candidates"},
           "targets": TARGETS}
    started = time.perf_counter()
    out["swapped_claims"] = swapped_claims(checker, test_rows, config.root, rng, args.swap_share)
    out["non_car"] = non_car(checker, Path(os.environ["CURATE_DATA"]) / "non-car", rng)
    checker.catalogue = build_catalogue(catalogue_rows, f"{args.dataset} train+val",
                                        None if args.no_thumbnails else config.root)
    out["reused"] = reused(checker, catalogue_rows, test_rows, config.root, args.reused, args.seed)
    out["catalogue_false_matches"] = catalogue_false_matches(checker, catalogue_rows, config.root)
    out["quality_seconds"] = round(time.perf_counter() - started, 1)
    if not args.no_load:
        payloads = [((config.root / p).read_bytes(), label)
                    for p, label in zip(test_rows["path"], test_rows["label"])]
        pixels = np.stack([checker.read("p", data).pixels for data, _ in payloads[:4]])
        rates = {f"model_only_{engine}_photos_per_second": model_only_rate(
            Predictor(args.workdir / "model", engine=engine), pixels) for engine in ENGINES}
        with tempfile.TemporaryDirectory(prefix="serve-index-") as index_workdir:
            write_manifest(catalogue_rows, Path(index_workdir))   # the train+val catalogue
            out["load"] = load_test(args.workdir / "model", args.dataset, Path(index_workdir),
                                    payloads, requests=args.requests, clients=args.clients,
                                    timeout=args.timeout)
        out["load"].update(rates, engine=checker.predictor.engine)
    out["met"] = {
        "wrong_model_recall": out["swapped_claims"]["draw"]["wrong_model_recall"] >= 0.9,
        "wrong_model_false_alarm": out["swapped_claims"]["draw"]["wrong_model_false_alarm"] <= 0.02,
        "non_car_recall": out["non_car"]["not_a_car_recall"] >= 0.98,
        "reused_recall": out["reused"]["reused_recall"] >= 0.95,
        "no_false_duplicates": (out["reused"]["fresh_called_duplicate"] == 0
                                and out["catalogue_false_matches"]["false_matches"] == 0)}
    if "load" in out:
        load = out["load"]
        out["met"].update(checks_per_second=load["checks_per_second"] >= 40,
                          p99=load["p99_seconds"] < 1.0,
                          bad_inputs=load["bad_inputs_all_ok"] and load["server_alive_after"])
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
