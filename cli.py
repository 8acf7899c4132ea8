"""`curate`: the command line. Each command parses its options, calls one library function, and
prints the summary that function returns (as text, or as JSON with --json)."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from curation.config import ConfigError, DatasetConfig, load_config, resolve_dataset
from curation.errors import CurateError, Interrupted
from curation.safety import CurateGroup, one_line

EXPECTED_ERRORS = (CurateError,)


@click.group(cls=CurateGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="CURATE_CONFIG", help="datasets.yaml to read (default: ./datasets.yaml, "
              "then the one shipped with curate).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Curate a folder of vehicle photos into a clean, leak-free dataset and a trained classifier.

    \b
    Pipeline (each step adds columns to <workdir>/manifest.parquet):
      curate scan stanford-cars-25        # list and check every file
      curate dedupe stanford-cars-25      # exact and near-duplicate groups
      curate flag-noise stanford-cars-25  # mislabelled and non-car photos
      curate review stanford-cars-25      # look at flags in the FiftyOne App
      curate split stanford-cars-25       # leak-free train/val/test
      curate train stanford-cars-25       # Keras classifier on the cleaned splits
    DATASET is a name from datasets.yaml or a folder of class folders.
    """
    ctx.obj = {"config_path": config_path}


def dataset_command(func):
    """Shared DATASET argument and --workdir/--json/--quiet options; turns known errors into
    one-line messages and prints the returned summary."""

    @click.argument("dataset")
    @click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                  help="Where results go (default: .curate/<dataset name>/).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx, dataset, workdir, as_json, quiet, **options):
        try:
            config = resolve_dataset(dataset, ctx.obj["config_path"])
            workdir = Path(workdir) if workdir else config.default_workdir()
            summary, describe = func(config=config, workdir=workdir, quiet=quiet or as_json,
                                     **options)
        except EXPECTED_ERRORS as exc:
            raise one_line(exc) from None
        emit(summary, describe, as_json)
        return summary

    return wrapper


def emit(summary: dict, describe, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(describe(summary))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """List the datasets in datasets.yaml and whether each root is found.

    Example: curate datasets
    """
    try:
        configs = load_config(ctx.obj["config_path"])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [{"name": c.name, "root": str(c.root), "found": c.root.is_dir(), "layout": c.layout,
             "description": c.description} for c in configs.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "found  " if row["found"] else "MISSING"
        click.echo(f"{mark} {row['name']:<20} {row['root']}  ({row['layout']})")
    if not all(r["found"] for r in rows):
        click.echo("Relative roots resolve against $CURATE_DATA; set it to the data folder.")


@main.command()
@dataset_command
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: cores).")
@click.option("--max-pixels", type=click.IntRange(1), default=80_000_000, show_default=True,
              help="Refuse images larger than this (decompression-bomb guard).")
def scan(config: DatasetConfig, workdir: Path, quiet: bool, workers, max_pixels):
    """List every file under the dataset root, check it decodes, and write the manifest.

    \b
    Example: curate scan stanford-cars-25 --workers 4
             curate scan ~/photos/cars --json
    Unchanged files (same path, size, mtime) reuse their cached rows.
    """
    from curation.scan import step as scan_step

    summary = scan_step.scan(config, workdir, workers=workers, max_pixels=max_pixels, quiet=quiet)
    return summary, scan_step.describe


@main.command()
@dataset_command
@click.option("--ratios", help="train,val,test fractions, e.g. 0.6,0.2,0.2 (default: the "
              "dataset's ratios in datasets.yaml).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, "
              "same split.")
@click.option("--keep-duplicates", is_flag=True, help="Keep every member of a duplicate group, in "
              "its keeper's split (default: only one per group, the others excluded).")
@click.option("--exclude", "exclude", multiple=True, show_default=True,
              type=click.Choice(["unreadable", "noise", "dropped", "none"]),
              default=("unreadable", "noise", "dropped"),
              help="Exclusion rules (repeat the option; 'none' for no rule): unreadable files, "
              "noise flagged by flag-noise (unless reviewed keep/relabel), reviewed drops. "
              "Unlabelled images are always excluded.")
@click.option("--respect-given", is_flag=True, help="Keep the folders' train/validation/test "
              "split and report duplicate groups that cross it.")
@click.option("--fix-leaks", is_flag=True, help="With --respect-given: move each crossing group "
              "whole into the first of train, val, test it touches.")
@click.option("--reshuffle", is_flag=True, help="Re-split every image (default: images that "
              "already have a split keep it; only new ones are placed).")
@click.option("--materialize", type=click.Path(file_okay=False, path_type=Path),
              help="Also lay out DIR/{train,val,test}/<class>/ as links to the images.")
@click.option("--link", type=click.Choice(["auto", "hardlink", "symlink", "copy"]), default="auto",
              show_default=True, help="How --materialize makes files (auto: hard link, else "
              "symlink, else copy).")
def split(config: DatasetConfig, workdir: Path, quiet: bool, ratios, seed, keep_duplicates,
          exclude, respect_given, fix_leaks, reshuffle, materialize, link):
    """Assign train/val/test (or excluded) to every image: stratified, leak-free, stable.

    \b
    Example: curate split stanford-cars-25 --ratios 0.7,0.15,0.15 --seed 1
             curate split swift-wagonr --respect-given --fix-leaks
             curate split indian-cars-7 --materialize ~/cars-split
    Writes the manifest's split, split_label and split_excluded_by columns and
    <workdir>/splits.csv. A duplicate group always lands in one split.
    """
    from curation.split import step as split_step

    summary = split_step.split(
        config, workdir, ratios=ratios, seed=seed, keep_duplicates=keep_duplicates,
        exclude=tuple(rule for rule in exclude if rule != "none"), respect_given=respect_given,
        fix_leaks=fix_leaks, reshuffle=reshuffle, materialize=materialize, link=link, quiet=quiet)
    return summary, split_step.describe


def exit_1_on_leaks(command):
    """Exit with status 1 after printing when the returned report lists leaking groups."""

    @functools.wraps(command)
    def checked(*args, **kwargs):
        report = command(*args, **kwargs)
        if report["leaking_groups"]:
            click.get_current_context().exit(1)
        return report

    return checked


@main.command("check-leaks")
@exit_1_on_leaks
@dataset_command
@click.option("--column", help="Split column to check (default: split if present, else "
              "given_split).")
def check_leaks(config: DatasetConfig, workdir: Path, quiet: bool, column):
    """Exit 1 and list the duplicate groups whose images sit in more than one split.

    \b
    Example: curate check-leaks swift-wagonr --column given_split
             curate check-leaks stanford-cars-25 --json
    Groups come from `curate dedupe` (else byte-identical files); excluded images never leak.
    """
    from curation import leaks

    return leaks.check_leaks(workdir, column), leaks.describe_check


# Plain constants for the option choices below; neither module imports anything heavy.
from curation.config import BACKBONES  # noqa: E402
from curation.pipeline import STEPS as PIPELINE_STEPS  # noqa: E402


def _print_step(entry: dict) -> None:
    """Progress of `run` and `demo` on stderr, so --json output stays clean."""
    from curation.pipeline import describe_step

    if entry["status"] == "running":
        click.echo(f"[{entry['step']}] running ...", err=True)
    else:
        click.echo(describe_step(entry), err=True)


def _command_line(ctx: click.Context) -> str:
    """The command as the user typed it (options left at their default omitted), to resume with."""
    import shlex

    parts = [f"curate {ctx.info_name}"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("as_json", "quiet") or value in (None, False, ()) or value == param.default:
            continue
        if isinstance(param, click.Argument):
            parts.append(shlex.quote(str(value)))
        else:
            parts.append(param.opts[0] if param.is_flag else f"{param.opts[0]} {shlex.quote(str(value))}")
    return " ".join(parts)


def _pipeline(config: DatasetConfig, workdir: Path, quiet: bool, **options) -> dict:
    """run_and_report with progress printing; a failed step or Ctrl-C becomes one clear message."""
    from curation import pipeline

    command = _command_line(click.get_current_context())
    current = {}

    def on_step(entry):
        current["step"] = entry["step"]
        if not quiet:
            _print_step(entry)

    try:
        return pipeline.run_and_report(config, workdir, quiet=quiet, on_step=on_step, **options)
    except pipeline.StepFailed as failed:
        error = click.ClickException(pipeline.failure_message(failed, command))
        error.exit_code = getattr(failed.cause, "exit_code", 1)
        raise error from None
    except KeyboardInterrupt as exc:
        from curation.lifecycle import interrupt_exit_code

        raise one_line(Interrupted(
            f"interrupted during step '{current.get('step', 'scan')}'; finished steps and caches "
            f"are kept: run `{command}` again to resume", interrupt_exit_code(exc))) from None


@main.command()
@dataset_command
@click.option("--until", type=click.Choice(PIPELINE_STEPS), help="Stop after this step.")
@click.option("--from", "from_step", type=click.Choice(PIPELINE_STEPS),
              help="Re-run from this step on, even when cached (earlier steps must have run).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for flag-noise, split and train; same seed, same result.")
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: cores).")
@click.option("--image-size", type=click.IntRange(32, 1024), help="Training image size "
              "(default: datasets.yaml).")
@click.option("--backbone", type=click.Choice(BACKBONES), help="Backbone (default: datasets.yaml).")
@click.option("--weights", help="imagenet, none, or a no-top weights file "
              "(default: datasets.yaml).")
@click.option("--epochs", type=click.IntRange(1), help="Head epochs (default: datasets.yaml).")
@click.option("--fine-tune-epochs", type=click.IntRange(0), help="Fine-tuning epochs.")
@click.option("--batch-size", type=click.IntRange(1), help="Training batch size.")
@click.option("--noise-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="flag-noise: flag when noise_score >= this (default: automatic).")
@click.option("--respect-given", is_flag=True,
              help="Split: keep the folders' train/validation/test.")
@click.option("--no-report", is_flag=True, help="Do not write <workdir>/report.html at the end.")
def run(config: DatasetConfig, workdir: Path, quiet: bool, until, from_step, seed, workers,
        image_size, backbone, weights, epochs, fine_tune_epochs, batch_size, noise_threshold,
        respect_given, no_report):
    """Run scan → dedupe → flag-noise → split → train → evaluate, then write the report.

    \b
    Example: curate run stanford-cars-25
             curate run swift-wagonr --until split
             curate run stanford-cars-25 --from train --epochs 4
    A step whose inputs and settings are unchanged since it last finished is skipped, so an
    interrupted or failed run resumes where it stopped. Progress goes to stderr.
    """
    from curation import pipeline

    config = pipeline.with_overrides(config, image_size=image_size, backbone=backbone,
                                     weights=weights, epochs=epochs,
                                     fine_tune_epochs=fine_tune_epochs, batch_size=batch_size)
    settings = pipeline.RunSettings(seed=seed, workers=workers, noise_threshold=noise_threshold,
                                    respect_given=respect_given)
    summary = _pipeline(config, workdir, quiet, until=until, from_step=from_step,
                        settings=settings, report=not no_report)
    return summary, pipeline.describe


@main.command()
@dataset_command
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the HTML (default: <workdir>/report.html).")
def report(config: DatasetConfig, workdir: Path, quiet: bool, out):
    """Write one self-contained HTML page: health, duplicates and leaks, noise, splits, model.

    \b
    Example: curate report stanford-cars-25
             curate report swift-wagonr --out ~/swift-report.html
    Thumbnails and plots are embedded, so the file can be sent on its own. Sections whose
    step has not run say which command fills them.
    """
    from curation.report import step as report_step

    return report_step.build_report(config, workdir, out=out), report_step.describe


@main.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo writes its data and workdir (default: ./.curate/demo).")
@click.option("--synthetic", is_flag=True,
              help="Use the generated set even when $CURATE_DATA is set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data and steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def demo(ctx: click.Context, folder, synthetic, seed, as_json, quiet):
    """Run the whole pipeline on a small dataset in a few minutes and point at the report.

    \b
    Example: curate demo
             CURATE_DATA=~/data CURATE_WEIGHTS=~/weights curate demo
    Uses swift-wagonr from $CURATE_DATA when present; otherwise generates a small SYNTHETIC
    set with planted duplicates, mislabels, off-topic and broken files. Weights come from
    $CURATE_WEIGHTS, Keras's cache (~/.keras/models) or shared/weights beside the checkout,
    else a Keras download; offline without any, the synthetic demo trains a small CNN from
    scratch (flag-noise skipped) and the real-photo demo says what to set.
    """
    from curation.demo import step as demo_step
    from curation import pipeline

    folder = (Path(folder) if folder else demo_step.default_folder()).resolve()
    try:
        config, data_note = demo_step.demo_dataset(folder, synthetic=synthetic, seed=seed,
                                                   config_path=ctx.obj["config_path"])
        weights, weights_note = demo_step.choose_weights(
            synthetic=demo_step.is_synthetic(config))
    except EXPECTED_ERRORS as exc:
        raise one_line(exc) from None
    config = demo_step.demo_config(config, weights)
    if not as_json:
        click.echo(f"Demo data: {data_note}\nWeights: {weights_note}\nFolder: {folder}", err=True)
    summary = _pipeline(config, folder / config.name, quiet or as_json,
                        settings=pipeline.RunSettings(seed=seed),
                        leave_out=demo_step.skipped_steps(weights))
    summary.update(data=data_note, weights=weights_note,
                   synthetic=demo_step.is_synthetic(config))
    emit(summary, demo_step.describe, as_json)


@main.command()
@dataset_command
@click.option("--sync", "do_sync", is_flag=True,
              help="Bring the reviewer's decisions back into the manifest (review_decision, "
                   "review_label) instead of building and launching.")
@click.option("--no-launch", is_flag=True, help="Only build or update the FiftyOne dataset.")
@click.option("--port", type=click.IntRange(1, 65535), default=5151, show_default=True,
              help="Port the App listens on.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address the App listens on (0.0.0.0 serves other machines too).")
@click.option("--db-dir", type=click.Path(file_okay=False), envvar="CURATE_FO_DB_DIR",
              help="Keep the FiftyOne database in this folder, served by a private mongod "
                   "[env CURATE_FO_DB_DIR; default: FiftyOne's own database].")
@click.option("--fo-dataset", envvar="CURATE_FO_DATASET",
              help="FiftyOne dataset name [env CURATE_FO_DATASET; default: curate-<dataset>].")
@click.option("--map-method", type=click.Choice(["auto", "umap", "tsne", "pca", "none"]),
              default="auto", show_default=True,
              help="2-D map of the cached embeddings (auto: umap if umap-learn is installed, "
                   "else tsne).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the 2-D map.")
def review(config: DatasetConfig, workdir: Path, quiet: bool, do_sync, no_launch, port, address,
           db_dir, fo_dataset, map_method, seed):
    """Review flagged images in the FiftyOne App; --sync brings the decisions back.

    \b
    Example: curate review stanford-cars-25              # build, serve http://127.0.0.1:5151
             curate review stanford-cars-25 --sync       # decisions -> manifest
    \b
    In the App, tag an image (tag icon above the grid or in the expanded view):
      drop              leave it out of every split
      keep              keep it although it was flagged
      relabel:<class>   keep it as <class>, e.g. relabel:Audi (one of the dataset's classes)
      relabel           keep it with the label flag-noise suggested
    Editing ground_truth.label from Python (sample.ground_truth.label = "Audi"; sample.save())
    counts as relabel too. Contradictory tags are listed by --sync and record nothing.
    Saved views: flagged by score, flagged not yet decided, duplicate groups, groups crossing
    splits, review decisions. Re-running updates the dataset in place and keeps review tags.
    """
    from curation.review import step as review_step
    from curation.review.fiftyone_db import DatabaseError

    try:
        if do_sync:
            summary = review_step.sync(config, workdir, fo_dataset=fo_dataset, db_dir=db_dir,
                                       quiet=quiet)
        else:
            summary = review_step.review(
                config, workdir, fo_dataset=fo_dataset, db_dir=db_dir, launch=not no_launch,
                address=address, port=port, map_method=map_method, seed=seed, quiet=quiet,
                announce=lambda text: click.echo(text, err=True))
    except (DatabaseError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    return summary, review_step.describe


TRAINING_OPTIONS = [  # (flag, TrainingSettings field, click type, help)
    ("--epochs", "epochs", click.IntRange(1), "Head-phase epochs (backbone frozen)."),
    ("--fine-tune-epochs", "fine_tune_epochs", click.IntRange(0), "Fine-tuning epochs (0: head only)."),
    ("--batch-size", "batch_size", click.IntRange(1), "Images per step."),
    ("--learning-rate", "learning_rate", click.FloatRange(0, min_open=True), "Head-phase Adam rate."),
    ("--fine-tune-learning-rate", "fine_tune_learning_rate", click.FloatRange(0, min_open=True),
     "Fine-tuning Adam rate."),
    ("--fine-tune-layers", "fine_tune_layers", click.IntRange(0),
     "Backbone layers unfrozen from the top (BatchNorm stays frozen)."),
    ("--dropout", "dropout", click.FloatRange(0, 1, max_open=True), "Dropout before the classifier."),
    ("--label-smoothing", "label_smoothing", click.FloatRange(0, 1, max_open=True), "Label smoothing."),
    ("--patience", "patience", click.IntRange(1), "Epochs without a better val score before stopping."),
]


def training_options(func):
    """The TrainingSettings options; unset ones keep the datasets.yaml value."""
    for flag, field, kind, text in reversed(TRAINING_OPTIONS):
        func = click.option(flag, field, type=kind, default=None,
                            help=f"{text} [default: from datasets.yaml]")(func)
    return click.option("--augment/--no-augment", default=None,
                        help="Flip/crop/rotate/colour augmentation while fine-tuning.")(func)


@main.command()
@dataset_command
@training_options
@click.option("--backbone", type=click.Choice(BACKBONES), help="ImageNet backbone [default: datasets.yaml].")
@click.option("--weights", help="imagenet ($CURATE_WEIGHTS file, else download), a no-top weights "
              "file, or none.")
@click.option("--image-size", type=click.IntRange(32, 1024), help="Square input size in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds shuffling, augmentation, init.")
@click.option("--workers", type=click.IntRange(1, 256), help="Decode processes (default: cores).")
def train(config: DatasetConfig, workdir: Path, quiet: bool, backbone, weights, image_size, seed,
          workers, **overrides):
    """Train a make/model classifier on the train split, picking the best epoch on val.

    \b
    Example: curate train stanford-cars-25 --epochs 10 --fine-tune-epochs 12
             KERAS_BACKEND=jax curate train swift-wagonr --image-size 192
    A frozen-backbone head phase, then fine-tuning of the top layers with augmentation.
    Writes <workdir>/model/: model.keras, labels.json, ood.json, history.csv, curves.png, logs/.
    The test split is never read.
    """
    from training import train as train_step

    summary = train_step.train(config, workdir, overrides=overrides, backbone=backbone,
                               weights=weights, image_size=image_size, seed=seed, workers=workers,
                               quiet=quiet)
    return summary, train_step.describe


@main.command()
@dataset_command
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Trained model folder (default: <workdir>/model).")
@click.option("--ood-folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images of no trained class (e.g. non-cars): report how often "
              "the guard flags them.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), help="Decode processes (default: cores).")
def evaluate(config: DatasetConfig, workdir: Path, quiet: bool, model_dir, ood_folder, batch_size,
             workers):
    """Score the trained model on the test split: accuracy, macro-F1, per class, plots.

    \b
    Example: curate evaluate stanford-cars-25 --ood-folder $CURATE_DATA/non-car
    Writes metrics.json, confusion.png, misclassified.png and predictions.csv to the workdir
    (with --model-dir: beside that model, so scoring another model never overwrites this one's).
    """
    from training import evaluate as evaluate_step

    try:
        summary = evaluate_step.evaluate(config, workdir, model_dir=model_dir, ood_folder=ood_folder,
                                         batch_size=batch_size, workers=workers, quiet=quiet)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    return summary, evaluate_step.describe


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Below this top probability the answer is 'unsure' (default: calibrated on val).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def predict(model_dir: Path, images, top_k, min_confidence, as_json):
    """Name the make/model in photos, or answer 'not a car' / 'unsure'.

    \b
    Example: curate predict .curate/stanford-cars-25/model car1.jpg car2.png --top-k 5
    MODEL_DIR is a model folder (or a workdir holding model/). An image far from every trained
    class (embedding distance, threshold calibrated on val) is 'not a car'; one whose top
    probability is below --min-confidence is 'unsure'. Unreadable files get an error entry.
    """
    from training import predict as predict_step

    if not (model_dir / "model.keras").exists() and (model_dir / "model" / "model.keras").exists():
        model_dir = model_dir / "model"
    try:
        results = predict_step.predict(model_dir, images, k=top_k, min_confidence=min_confidence)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    emit(results, predict_step.describe, as_json)


@main.command()
@dataset_command
@click.option("--hash", "kinds", default="phash,dhash", show_default=True,
              help="Perceptual hashes, comma-separated from phash, dhash, whash, ahash. The first "
                   "one is searched; with several, every one must be within its threshold.")
@click.option("--threshold", type=click.IntRange(0, 64),
              help="Largest Hamming distance (bits) for every hash. Default: measured per hash "
                   "(phash,dhash: 8 each; phash alone: 6), see docs/dedupe.md.")
@click.option("--no-mirror", is_flag=True, help="Do not count mirrored copies as duplicates.")
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: cores).")
@click.option("--sheet-groups", type=click.IntRange(0, 500), default=12, show_default=True,
              help="Largest groups drawn in <workdir>/dupes.png.")
def dedupe(config: DatasetConfig, workdir: Path, quiet: bool, kinds, threshold, no_mirror,
           workers, sheet_groups):
    """Find exact and near-duplicate photos, keep one per group, and report train/test leaks.

    \b
    Example: curate dedupe indian-cars-7
             curate dedupe stanford-cars-25 --hash phash --threshold 6 --no-mirror
    Exact: same bytes, or same pixels in another file format. Near: resized, re-compressed,
    cropped by a few percent, brightened, watermarked or mirrored copies. The keeper of each
    group has the most pixels, then the most bytes per pixel, then the first path. Adds hash
    columns and dup_group, dup_keeper, dup_of, dup_distance, dup_reason to the manifest and
    writes dupes.csv and dupes.png; a re-run only hashes new or changed files.
    """
    from curation.dedupe import step as dedupe_step

    summary = dedupe_step.dedupe(config, workdir, kinds=kinds, threshold=threshold,
                                 mirror=not no_mirror, workers=workers,
                                 sheet_groups=sheet_groups, quiet=quiet)
    return summary, dedupe_step.describe


@main.command("flag-noise")
@dataset_command
@click.option("--backbone", type=click.Choice(BACKBONES),
              help="Embedding backbone (default: datasets.yaml, else mobilenet_v2).")
@click.option("--weights", help="imagenet (a file from $CURATE_WEIGHTS, else Keras downloads it), "
              "a no-top weights file, or none (default: datasets.yaml).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="Cross-validation folds of the mislabel head.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same flags.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Flag when noise_score >= this (default: automatic, each signal's own cut "
              "from confident learning's noise-rate estimate and robust z-scores).")
@click.option("--max-flag-rate", type=click.FloatRange(0, 1, min_open=True), default=0.3,
              show_default=True, help="Flag at most this fraction of images (top scores).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Images per embedding batch.")
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Average each embedding with its mirror image's (2x slower, finds more).")
@click.option("--workers", type=click.IntRange(1, 64), help="Image-loading threads.")
@click.option("--audit", is_flag=True, help="Also plant known noise in memory (5% wrong labels, "
              "and outside photos with --noncar-dir) and report how much of it is caught.")
@click.option("--noncar-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of non-car photos for --audit to plant (never copied).")
def flag_noise(config: DatasetConfig, workdir: Path, quiet: bool, backbone, weights, folds, seed,
               threshold, max_flag_rate, batch_size, tta, workers, audit, noncar_dir):
    """Flag non-car photos, wrong labels and outliers from backbone embeddings.

    \b
    Example: curate flag-noise stanford-cars-25
             curate flag-noise ~/photos/cars --weights ~/mobilenet_v2_no_top.h5
             curate flag-noise stanford-cars-25 --audit --noncar-dir ~/non-car
    Embeddings are cached in <workdir>/embeddings (only new files are embedded again). Adds
    noise_score, noise_flag, noise_reason, suggested_label and one column per signal to the
    manifest, and writes noise.csv, noise_suspects.png and noise_scores.png. Files are never
    changed.
    """
    from curation.noise import step as noise

    if noncar_dir is not None and not audit:
        raise click.UsageError("--noncar-dir is used by --audit; add --audit")
    summary = noise.flag_noise(config, workdir, backbone=backbone, weights=weights, folds=folds,
                               seed=seed, threshold=threshold, max_flag_rate=max_flag_rate,
                               batch_size=batch_size, tta=tta, workers=workers, audit=audit,
                               noncar_dir=noncar_dir, quiet=quiet)
    return summary, noise.describe


if __name__ == "__main__":
    sys.exit(main())
