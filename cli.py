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

from curation import environment, model_cli, registry
from curation.cli_options import run_options, run_settings, step_options
from curation.config import load_config, resolve_dataset
from curation.errors import Interrupted
from curation.lifecycle import interrupt_exit_code
from curation.model_cli import emit
from curation.safety import CurateGroup, one_line
from curation.registry import REVIEW
from curation.report import step as report_step
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


def step_command(step: Step, outcome=None):
    """`curate <step>`: its Settings as options and its help, run through the Step protocol;
    outcome(command) may wrap the command (check-leaks: exit 1 on leaks)."""

    def command(config, workdir, quiet, **settings):
        return run_step(step, config, workdir, quiet=quiet, **settings), step.describe

    command.__doc__ = step.help
    generated = dataset_command(step_options(step)(command))
    return main.command(step.name)(outcome(generated) if outcome else generated)


def exit_1_on_leaks(command):
    """Exit with status 1 after printing when the returned report lists leaking groups."""

    @functools.wraps(command)
    def checked(*args, **kwargs):
        report = command(*args, **kwargs)
        if report["leaking_groups"]:
            click.get_current_context().exit(1)
        return report

    return checked


for _step in registry.PIPELINE:
    step_command(_step)
step_command(registry.CHECK_LEAKS, exit_1_on_leaks)
step_command(report_step.STEP)


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
    scratch (embed, flag-noise skipped) and the real-photo demo says what to set.
    """
    from curation.demo import step as demo_step

    folder = (Path(folder) if folder else demo_step.default_folder()).resolve()
    config, data_note = demo_step.demo_dataset(folder, synthetic=synthetic, seed=seed,
                                               config_path=ctx.obj["config_path"])
    weights, weights_note = demo_step.choose_weights(synthetic=demo_step.is_synthetic(config))
    config = demo_step.demo_config(config, weights)
    if not as_json:
        click.echo(f"Demo data: {data_note}\nWeights: {weights_note}\nFolder: {folder}", err=True)
    summary = _pipeline(config, folder / config.name, quiet or as_json, settings={"seed": seed},
                        leave_out=demo_step.skipped_steps(weights))
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


for _command in (model_cli.predict, model_cli.check, model_cli.serve):
    main.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
