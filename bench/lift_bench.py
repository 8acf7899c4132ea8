"""Cleaning lift: one training recipe on raw data with planted noise vs on the same data after
dedupe + flag-noise + a leak-free split, both scored on one clean held-out test set. Prints JSON.

A real dataset (default stanford-cars-25 from $CURATE_DATA) is cut per class into a clean test set
and a pool. Into a scratch copy of the pool go mislabels (images moved to another class folder),
non-car photos ($CURATE_DATA/non-car) and near-duplicates (re-encoded, resized, cropped, mirrored
copies). "raw" trains on that pool with a plain random train/val split (everything kept, as a
notebook would); "clean" runs the curate steps first. The test set is never noised or trained on.

Example: python bench/lift_bench.py --fine-tune-epochs 12 > lift.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curation.config import DatasetConfig, data_dir, resolve_dataset  # noqa: E402
from curation.dedupe.step import dedupe  # noqa: E402
from curation.images import ImageError, load_image  # noqa: E402
from curation.manifest import read_manifest, write_manifest  # noqa: E402
from curation.noise.step import flag_noise  # noqa: E402
from curation.scan.step import list_files, scan  # noqa: E402
from curation.split.step import split  # noqa: E402
from curation.demo.synthetic import NEAR_TRANSFORMS, near_copy  # noqa: E402


def plan_noise(files: list[tuple[str, str]], classes: list[str], non_cars: list[Path], *,
               test_fraction: float, mislabel: float, non_car: float, duplicates: float,
               seed: int) -> tuple[list, list]:
    """(test items, pool items): each item is (source, folder label, kind, true label, transform)."""
    rng = np.random.default_rng(seed)
    test, pool = [], []
    for label in classes:
        members = [path for path, lab in files if lab == label]
        members = [members[i] for i in rng.permutation(len(members))]
        cut = int(round(len(members) * test_fraction))
        test += [(path, label, "original", label, None) for path in members[:cut]]
        pool += [(path, label, "original", label, None) for path in members[cut:]]
    order = rng.permutation(len(pool))
    n_mislabel, n_dup = int(len(pool) * mislabel), int(len(pool) * duplicates)
    for i in order[:n_mislabel]:
        path, label, _, true, _ = pool[i]
        wrong = [c for c in classes if c != label]
        pool[i] = (path, wrong[rng.integers(len(wrong))], "mislabel", true, None)
    copies = [(pool[i][0], pool[i][1], "near_duplicate", pool[i][3],
               NEAR_TRANSFORMS[rng.integers(len(NEAR_TRANSFORMS))])
              for i in order[n_mislabel:n_mislabel + n_dup]]
    picked = rng.choice(len(non_cars), size=min(len(non_cars), int(len(pool) * non_car)), replace=False)
    strays = [(str(non_cars[i]), classes[rng.integers(len(classes))], "non_car", None, None)
              for i in picked]
    return test, pool + copies + strays


def write_items(items: list, source_root: Path, out: Path, seed: int) -> dict[str, str]:
    """Copy (or near-copy) each item into out/<label>/; returns relative path -> planted kind."""
    rng = np.random.default_rng(seed)
    kinds = {}
    for n, (source, label, kind, _, transform) in enumerate(items):
        src = Path(source) if Path(source).is_absolute() else source_root / source
        name = f"{n:05d}_{kind}_{src.stem}.jpg"
        target = out / label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if transform:
            try:
                target.write_bytes(near_copy(load_image(src), transform, rng))
            except ImageError:
                continue
        else:
            shutil.copyfile(src, target)
        kinds[f"{label}/{name}"] = kind
    return kinds


def train_and_score(config: DatasetConfig, workdir: Path, test: tuple[DatasetConfig, Path],
                    args) -> dict:
    from training.steps import evaluate, train

    summary = train(config, workdir, seed=args.seed, workers=args.workers, quiet=True,
                    image_size=args.image_size)
    metrics = evaluate(test[0], test[1], model_dir=workdir / "model", workers=args.workers, quiet=True)
    return {"train_images": summary["train_images"], "val_images": summary["val_images"],
            "val_accuracy": summary["val_accuracy"], "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"], "train_seconds": summary["seconds"]}


def excluded_share(workdir: Path, kinds: dict[str, str]) -> dict:
    """Per planted kind: how many rows the clean split left out (and why)."""
    manifest = read_manifest(workdir)
    manifest["kind"] = manifest["path"].map(kinds)
    out = {}
    for kind, rows in manifest.groupby("kind"):
        excluded = rows["split"] == "excluded"
        out[kind] = {"planted": int(len(rows)), "excluded": int(excluded.sum()),
                     "excluded_share": round(float(excluded.mean()), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="stanford-cars-25")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--mislabel", type=float, default=0.10, help="share of pool images moved")
    parser.add_argument("--non-car", type=float, default=0.06, help="non-cars per pool image")
    parser.add_argument("--duplicates", type=float, default=0.12, help="near-copies per pool image")
    parser.add_argument("--val-ratio", type=float, default=0.15)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--fine-tune-epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temp folder, removed)")
    args = parser.parse_args()
    started = time.time()
    base = resolve_dataset(args.dataset)
    noise_root = (data_dir() or Path(".")) / "non-car"
    non_cars = sorted(noise_root.glob("*.jpg"))
    if not non_cars:
        sys.exit(f"no non-car photos under {noise_root}: set CURATE_DATA")
    listing = list_files(base.root, base.layout)
    files = [(f.path, f.label) for f in listing.files if f.label]
    classes = sorted({label for _, label in files})
    test_items, pool_items = plan_noise(files, classes, non_cars, test_fraction=args.test_fraction,
                                        mislabel=args.mislabel, non_car=args.non_car,
                                        duplicates=args.duplicates, seed=args.seed)
    scratch = args.out or Path(tempfile.mkdtemp(prefix="lift-bench-"))
    write_items(test_items, base.root, scratch / "test", args.seed)
    kinds = write_items(pool_items, base.root, scratch / "pool", args.seed)
    training = dataclasses.replace(base.training, **{k: v for k, v in {
        "epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs}.items() if v is not None})
    ratios = (1 - args.val_ratio, args.val_ratio, 0.0)

    def dataset(name: str, folder: str) -> DatasetConfig:
        return dataclasses.replace(base, name=name, root=scratch / folder, layout="class_folders",
                                   classes=None, ratios=ratios, training=training)

    test_config, test_work = dataset("lift-test", "test"), scratch / "work-test"
    scan(test_config, test_work, workers=args.workers, quiet=True)
    manifest = read_manifest(test_work)
    manifest["split"] = "test"
    write_manifest(manifest, test_work)

    raw, raw_work = dataset("lift-raw", "pool"), scratch / "work-raw"
    scan(raw, raw_work, workers=args.workers, quiet=True)
    split(raw, raw_work, ratios=ratios, seed=args.seed, exclude=(), keep_duplicates=True, quiet=True)
    raw_result = train_and_score(raw, raw_work, (test_config, test_work), args)

    clean, clean_work = dataset("lift-clean", "pool"), scratch / "work-clean"
    scan(clean, clean_work, workers=args.workers, quiet=True)
    dedupe(clean, clean_work, workers=args.workers, quiet=True)
    flag_noise(clean, clean_work, seed=args.seed, workers=args.workers, quiet=True)
    split(clean, clean_work, ratios=ratios, seed=args.seed, quiet=True)
    clean_result = train_and_score(clean, clean_work, (test_config, test_work), args)
    clean_result["excluded_by_planted_kind"] = excluded_share(clean_work, kinds)

    planted = {kind: sum(1 for k in kinds.values() if k == kind) for kind in sorted(set(kinds.values()))}
    print(json.dumps({
        "bench": "lift", "dataset": args.dataset, "classes": len(classes),
        "test_images": len(test_items), "planted": planted, "seed": args.seed,
        "recipe": {"backbone": base.backbone, "image_size": args.image_size or base.image_size,
                   **dataclasses.asdict(training)},
        "clean_steps": ["dedupe", "flag-noise", "split"],
        "raw": raw_result, "clean": clean_result,
        "lift_test_accuracy": round(clean_result["test_accuracy"] - raw_result["test_accuracy"], 4),
        "lift_test_macro_f1": round(clean_result["test_macro_f1"] - raw_result["test_macro_f1"], 4),
        "seconds": round(time.time() - started, 1),
    }, indent=2))
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
