"""`curate`: the command line. Each command parses its options, calls one library function, and
prints the summary that function returns (as text, or as JSON with --json)."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from curation.config import ConfigError, DatasetConfig, load_config, resolve_dataset
from curation.manifest import ManifestMissing, WorkdirBusy

EXPECTED_ERRORS = (ConfigError, WorkdirBusy, ManifestMissing)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
            raise click.ClickException(str(exc)) from None
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
    from curation import scan as scan_step

    summary = scan_step.scan(config, workdir, workers=workers, max_pixels=max_pixels, quiet=quiet)
    return summary, scan_step.describe


if __name__ == "__main__":
    sys.exit(main())
