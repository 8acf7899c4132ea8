"""`curate`: the command line. Each command parses its options, calls one library function, and
prints the summary that function returns (as text, or as JSON with --json). Step options come
from each step's Settings (curation/cli_options.py); errors are CurateErrors, printed as one
line by CurateGroup."""
from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path

import click

from curation import environment, registry
from curation.cli_options import run_options, run_settings, step_options
from curation.config import load_config, resolve_dataset
from curation.errors import Interrupted
from curation.lifecycle import interrupt_exit_code
from curation.safety import CurateGroup, one_line
from curation.registry import REVIEW
from curation.steps import Step, run_step

WORKDIR_HELP = "Where results go (default: .curate/<dataset name>/)."


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
    environment.prepare()
    ctx.obj = {"config_path": config_path}


def emit(summary, describe, as_json: bool) -> None:
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else describe(summary))


def dataset_command(func):
    """DATASET and --workdir/--json/--quiet; func(config, workdir, quiet, **options) returns
    (summary, describe), which is printed."""

    @click.argument("dataset")
    @click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help=WORKDIR_HELP)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx, dataset, workdir, as_json, quiet, **options):
        config = resolve_dataset(dataset, ctx.obj["config_path"])
        workdir = Path(workdir) if workdir else config.default_workdir()
        summary, describe = func(config=config, workdir=workdir, quiet=quiet or as_json, **options)
        emit(summary, describe, as_json)
        return summary

    return wrapper


def step_command(step: Step):
    """`curate <step>`: its Settings as options and its help, run through the Step protocol."""

    def command(config, workdir, quiet, **settings):
        return run_step(step, config, workdir, quiet=quiet, **settings), step.describe

    command.__doc__ = step.help
    return main.command(step.name)(dataset_command(step_options(step)(command)))


for _step in registry.PIPELINE:
    step_command(_step)




@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """List the datasets in datasets.yaml and whether each root is found.

    Example: curate datasets
    """
    rows = [{"name": c.name, "root": str(c.root), "found": c.root.is_dir(), "layout": c.layout,
             "description": c.description} for c in load_config(ctx.obj["config_path"]).values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "found  " if row["found"] else "MISSING"
        click.echo(f"{mark} {row['name']:<20} {row['root']}  ({row['layout']})")
    if not all(r["found"] for r in rows):
        click.echo("Relative roots resolve against $CURATE_DATA; set it to the data folder.")


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
def check_leaks(config, workdir: Path, quiet: bool, column):
    """Exit 1 and list the duplicate groups whose images sit in more than one split.

    \b
    Example: curate check-leaks swift-wagonr --column given_split
             curate check-leaks stanford-cars-25 --json
    Groups come from `curate dedupe` (else byte-identical files); excluded images never leak.
    """
    from curation import leaks

    return leaks.check_leaks(workdir, column), leaks.describe_check


def _command_line(ctx: click.Context) -> str:
    """The command as the user typed it (options left at their default omitted), to resume with."""
    parts = [f"curate {ctx.info_name}"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        plain_flag_off = value is False and not getattr(param, "secondary_opts", None)
        if param.name in ("as_json", "quiet") or value in (None, ()) or plain_flag_off:
            continue
        if value == param.default:
            continue
        if isinstance(param, click.Argument):
            parts.append(shlex.quote(str(value)))
        elif isinstance(value, bool):
            parts.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            values = value if isinstance(value, tuple) else (value,)
            parts.extend(f"{param.opts[0]} {shlex.quote(str(v))}" for v in values)
    return " ".join(parts)


def _pipeline(config, workdir: Path, quiet: bool, **options) -> dict:
    """run_and_report printing progress on stderr; a failed step or Ctrl-C is one clear message."""
    from curation import pipeline

    command, current = _command_line(click.get_current_context()), {}

    def on_step(entry):
        current["step"] = entry["step"]
        if not quiet:
            running = entry["status"] == "running"
            click.echo(f"[{entry['step']}] running ..." if running
                       else pipeline.describe_step(entry), err=True)

    try:
        return pipeline.run_and_report(config, workdir, quiet=quiet, on_step=on_step, **options)
    except pipeline.StepFailed as failed:
        error = click.ClickException(pipeline.failure_message(failed, command))
        error.exit_code = getattr(failed.cause, "exit_code", 1)
        raise error from None
    except KeyboardInterrupt as exc:
        raise one_line(Interrupted(
            f"interrupted during step '{current.get('step', 'scan')}'; finished steps and caches "
            f"are kept: run `{command}` again to resume", interrupt_exit_code(exc))) from None


@main.command()
@dataset_command
@click.option("--until", type=click.Choice(registry.NAMES), help="Stop after this step.")
@click.option("--from", "from_step", type=click.Choice(registry.NAMES),
              help="Re-run from this step on, even when cached (earlier steps must have run).")
@click.option("--no-report", is_flag=True, help="Do not write <workdir>/report.html at the end.")
@run_options(registry.PIPELINE)
def run(config, workdir: Path, quiet: bool, until, from_step, no_report, **options):
    """Run scan → dedupe → flag-noise → split → train → evaluate, then write the report.

    \b
    Example: curate run stanford-cars-25
             curate run swift-wagonr --until split
             curate run stanford-cars-25 --from train --epochs 4
    Every step's options are accepted ([step] in their help). An option not given keeps what
    that step used last time (or its default; datasets.yaml's for backbone, sizes, training).
    A step whose settings and inputs are unchanged since it last ran is skipped, so an
    interrupted or failed run resumes where it stopped. Progress goes to stderr.
    """
    from curation import pipeline

    summary = _pipeline(config, workdir, quiet, until=until, from_step=from_step,
                        settings=run_settings(registry.PIPELINE, options), report=not no_report)
    return summary, pipeline.describe


@main.command()
@dataset_command
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the HTML (default: <workdir>/report.html).")
def report(config, workdir: Path, quiet: bool, out):
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
              help="Where the demo writes its data and workdir (default: <temp>/curate-demo).")
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
    $CURATE_WEIGHTS, else a Keras download, else random init (with a note).
    """
    from curation.demo import step as demo_step

    folder = Path(folder) if folder else demo_step.default_folder()
    weights, weights_note = demo_step.choose_weights()
    config, data_note = demo_step.demo_dataset(folder, synthetic=synthetic, seed=seed,
                                               config_path=ctx.obj["config_path"])
    config = demo_step.demo_config(config, weights)
    if not as_json:
        click.echo(f"Demo data: {data_note}\nWeights: {weights_note}\nFolder: {folder}", err=True)
    summary = _pipeline(config, folder / config.name, quiet or as_json, settings={"seed": seed})
    summary.update(data=data_note, weights=weights_note, synthetic=demo_step.is_synthetic(config))
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
@step_options(REVIEW)
def review(config, workdir: Path, quiet: bool, do_sync, no_launch, port, address, fo_dataset,
           db_dir, map_method, seed):
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

    where = {"fo_dataset": fo_dataset, "db_dir": db_dir}
    if do_sync:
        return review_step.sync(config, workdir, quiet=quiet, **where), review_step.describe
    return review_step.review(
        config, workdir, launch=not no_launch, address=address, port=port, quiet=quiet,
        map_method=map_method, seed=seed, announce=lambda text: click.echo(text, err=True),
        **where), review_step.describe


def model_folder(model_dir: Path) -> Path:
    """A model folder, or the workdir that holds one in model/."""
    if not (model_dir / "model.keras").exists() and (model_dir / "model" / "model.keras").exists():
        return model_dir / "model"
    return model_dir


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

    results = predict_step.predict(model_folder(model_dir), images, k=top_k,
                                   min_confidence=min_confidence)
    emit(results, predict_step.describe, as_json)


def check_options(func):
    """MODEL_DIR and the catalogue options shared by `check` and `serve`."""
    func = click.option("--index-threshold", type=click.IntRange(0, 64),
                        help="Hamming bits every hash may differ by (default: dedupe's, "
                             "8 for phash+dhash; 10 finds more cropped copies, see "
                             "docs/check.md).")(func)
    func = click.option("--index-workdir", type=click.Path(file_okay=False, path_type=Path),
                        help="Workdir of the --index dataset (default: .curate/<dataset>/).")(func)
    func = click.option("--index", "index", metavar="DATASET",
                        help="Catalogue to look re-used photos up in: a dataset that `curate "
                             "dedupe` has hashed (its index is kept in its workdir).")(func)
    return click.argument("model_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path))(func)


def load_checker(model_dir: Path, index: str | None, index_workdir: Path | None,
                 index_threshold: int | None):
    """The model (and catalogue) behind `check` and `serve`, loaded once."""
    from training.catalogue import load_catalogue
    from training.check import Checker

    catalogue = None
    if index is not None:
        config = resolve_dataset(index, click.get_current_context().obj["config_path"])
        catalogue = load_catalogue(index_workdir or config.default_workdir(), config.name,
                                   index_threshold)
    return Checker(model_folder(model_dir), catalogue=catalogue)


@main.command()
@check_options
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--claimed", metavar="LABEL", help="The model the seller claims for every IMAGE.")
@click.option("--claims", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV with columns path,claimed_label (paths relative to the CSV's folder).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every verdict to this file (.csv or .json).")
@click.option("--top-k", "-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
def check(model_dir, index, index_workdir, index_threshold, images, claimed, claims, out, top_k,
          as_json):
    """Tell whether listing photos show the claimed model, are not a car, or re-use a photo.

    \b
    Example: curate check .curate/swift-wagonr/model car1.jpg car2.jpg --claimed swift
             curate check .curate/stanford-cars-25 --claims claims.csv --index stanford-cars-25
    Verdicts, first that applies: unreadable, not_a_car, duplicate (re-uses a photo of the
    --index catalogue), wrong_model (confidently another class; at most 1 % of correctly
    labelled val photos get it), unsure, ok. Thresholds are calibrated on val.
    """
    from training import claims as claims_step

    pairs = claims_step.read_claims(images, claimed, claims)
    checker = load_checker(model_dir, index, index_workdir, index_threshold)
    emit(claims_step.check_files(checker, pairs, out=out, k=top_k), claims_step.describe, as_json)


@main.command()
@check_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 serves other machines too).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-bytes", type=click.IntRange(1), default=20_000_000, show_default=True,
              help="Largest upload; bigger ones get HTTP 413.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True, help="Seconds a request body may stall before HTTP 408.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Most uploads run through the model in one call.")
def serve(model_dir, index, index_workdir, index_threshold, host, port, max_bytes, timeout,
          max_batch):
    """Serve `curate check` as an HTTP API with an upload form, until Ctrl-C.

    \b
    Example: curate serve .curate/swift-wagonr/model --index swift-wagonr --port 8000
             curl -F image=@car.jpg -F claimed_label=swift http://127.0.0.1:8000/check
    POST /check, POST /check/batch, GET /health, GET /classes; the form at /, API docs at
    /docs. The model is loaded once; uploads arriving together share one model call.
    """
    from training import serve as serve_step

    checker = load_checker(model_dir, index, index_workdir, index_threshold)
    serve_step.serve(checker, host=host, port=port, max_bytes=max_bytes, timeout=timeout,
                     max_batch=max_batch, announce=lambda text: click.echo(text, err=True))


if __name__ == "__main__":
    sys.exit(main())
