"""The seed's own data (swift-wagonr-4000): the author's given split vs the given split with its
leaks removed vs cleaned data, every model scored on ONE leak-free test set. Prints JSON.

The test set T is the test split of a fresh, cleaned, leak-free split (dedupe + flag-noise
exclusions, one image per duplicate group). Every training set leaves out T and every image of
a duplicate group that touches T, so no copy of a test photo is ever trained or selected on:
  given        the author's train/validation folders as published (copies, wrong pictures kept)
  given-fixed  the same folders with each duplicate group moved whole into one split and one
               image per group kept (`curate split --respect-given --fix-leaks`); noise kept
  clean        the fresh cleaned split's train/val
The `given` model is also scored on the author's own test folder, the figure the author would
have published (leaky: copies of its photos sit in train).

Example: python bench/swift4000_bench.py --workdir /tmp/sw4k --sizes 160 > swift4000.json
         python bench/swift4000_bench.py --variants clean --sizes 128,160,224 --fine-tune-epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curation.config import resolve_dataset  # noqa: E402
from curation.dedupe.step import dedupe  # noqa: E402
from curation.manifest import read_manifest, write_manifest  # noqa: E402
from curation.noise.step import flag_noise  # noqa: E402
from curation.scan.step import scan  # noqa: E402
from curation.split.step import split  # noqa: E402
from curation.vocabulary import GIVEN_TO_SPLIT, manifest_groups  # noqa: E402

VARIANTS = ("given", "given-fixed", "clean")


def touching(manifest: pd.DataFrame, rows: pd.Series) -> pd.Series:
    """True for every row of a duplicate group that holds one of `rows` (and for `rows` themselves)."""
    groups, _ = manifest_groups(manifest)
    groups.index = manifest.index
    hit = set(groups[rows & groups.notna()])
    return rows | groups.isin(hit).fillna(False).astype(bool)


def scored_split(manifest: pd.DataFrame, train_val: pd.Series, test: pd.Series) -> pd.Series:
    """`train_val` (train/val/excluded per row) with T as test and T's duplicate groups left out."""
    out = train_val.where(train_val.isin(["train", "val"]), "excluded").astype("object")
    out[touching(manifest, test)] = "excluded"
    out[test] = "test"
    return out


def given_split(manifest: pd.DataFrame, config, scratch: Path, seed: int) -> dict[str, pd.Series]:
    """The author's folders as splits, raw and with leaks fixed (one image per group)."""
    raw = manifest["given_split"].astype("string").map(GIVEN_TO_SPLIT).fillna("excluded")
    fixed_work = scratch / "given-fixed-split"
    write_manifest(manifest, fixed_work)
    split(config, fixed_work, respect_given=True, fix_leaks=True, exclude=("unreadable",),
          seed=seed, quiet=True)
    fixed = read_manifest(fixed_work).set_index("path")["split"].reindex(manifest["path"])
    return {"given": raw, "given-fixed": pd.Series(fixed.to_numpy(), index=manifest.index)}


def variant_workdir(scratch: Path, name: str, manifest: pd.DataFrame, splits: pd.Series,
                    cache: Path) -> Path:
    """A workdir holding the manifest with `splits`, sharing one pixel cache with the others."""
    work = scratch / name
    write_manifest(manifest.assign(split=pd.Series(splits, dtype="string")), work)
    if not (work / "cache").exists():
        os.symlink(cache, work / "cache")
    return work


def train_and_score(config, work: Path, size: int, args) -> dict:
    from training.steps import evaluate, train

    recipe = {k: v for k, v in {"epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
                                "fine_tune_layers": args.fine_tune_layers}.items() if v is not None}
    summary = train(config, work, seed=args.seed, workers=args.workers, quiet=True,
                    image_size=size, **recipe)
    metrics = evaluate(config, work, workers=args.workers, quiet=True)
    return {"image_size": size, "train_images": summary["train_images"],
            "val_images": summary["val_images"], "val_accuracy": summary["val_accuracy"],
            "test_images": metrics["test_images"], "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"], "train_seconds": summary["seconds"]}


def author_test_score(config, scratch: Path, manifest: pd.DataFrame, model_work: Path,
                      cache: Path, args) -> dict:
    """The given model on the author's whole test folder: the leaky figure it would publish."""
    from training.steps import evaluate

    given = manifest["given_split"].astype("string").map(GIVEN_TO_SPLIT).fillna("excluded")
    work = variant_workdir(scratch, "given-author-test", manifest, given, cache)
    metrics = evaluate(config, work, model_dir=model_work / "model", workers=args.workers,
                       quiet=True)
    return {"test_images": metrics["test_images"], "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"]}


def clean_data(config, workdir: Path, args) -> tuple[pd.DataFrame, dict]:
    """scan, dedupe, flag-noise (cached per file) and a fresh cleaned split of the dataset."""
    scan(config, workdir, workers=args.workers, quiet=True)
    found = dedupe(config, workdir, workers=args.workers, quiet=True)
    noise = flag_noise(config, workdir, seed=args.seed, workers=args.workers, quiet=True)
    split(config, workdir, ratios=config.ratios, seed=args.seed, reshuffle=True, quiet=True)
    return read_manifest(workdir), {"dedupe": found, "flag_noise": noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="swift-wagonr-4000")
    parser.add_argument("--workdir", type=Path, help="curate workdir to (re)use for scan/dedupe/"
                        "flag-noise (default: a temp folder)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--sizes", default="160", help="image sizes, comma-separated")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--fine-tune-epochs", type=int)
    parser.add_argument("--fine-tune-layers", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.time()
    config = resolve_dataset(args.dataset)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="swift4000-"))
    manifest, cleaning = clean_data(config, workdir, args)
    test = (manifest["split"] == "test").fillna(False).astype(bool)
    scratch = workdir / "bench-swift4000"
    cache = scratch / "pixels"
    cache.mkdir(parents=True, exist_ok=True)
    splits = {"clean": manifest["split"].astype("object"),
              **given_split(manifest.drop(columns=["split"]), config, scratch, args.seed)}
    runs = []
    for name in variants:
        work = variant_workdir(scratch, name, manifest, scored_split(manifest, splits[name], test),
                               cache)
        for size in sizes:
            result = {"variant": name, **train_and_score(config, work, size, args)}
            if name == "given":
                result["author_test_folder"] = author_test_score(config, scratch, manifest, work,
                                                                 cache, args)
            runs.append(result)
            print(json.dumps(result), file=sys.stderr)
    dedupe_summary = {k: cleaning["dedupe"].get(k) for k in
                      ("groups", "images_in_groups", "redundant", "by_reason")}
    leaks = cleaning["dedupe"].get("cross_split") or {}
    print(json.dumps({
        "bench": "swift4000", "dataset": args.dataset, "seed": args.seed,
        "test_set": {"images": int(test.sum()),
                     "per_class": manifest.loc[test, "label"].value_counts().to_dict()},
        "recipe": {"backbone": config.backbone, "epochs": args.epochs or config.training.epochs,
                   "fine_tune_epochs": args.fine_tune_epochs
                   if args.fine_tune_epochs is not None else config.training.fine_tune_epochs},
        "dedupe": {**dedupe_summary, "cross_given_splits": {k: leaks.get(k) for k in
                                                             ("leaking_groups", "leaking_images", "pairs")}},
        "flag_noise": {k: cleaning["flag_noise"].get(k) for k in
                       ("images", "flagged", "flagged_rate", "noise_rate", "by_reason")},
        "author_validation_baseline": 0.88,
        "runs": runs, "load_average": os.getloadavg(), "seconds": round(time.time() - started, 1),
    }, indent=2, default=str))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
