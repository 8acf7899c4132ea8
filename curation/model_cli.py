"""The model commands of `curate`: predict, check and serve. Each takes a trained model folder
(or the workdir holding model/) rather than a dataset, so none is a Step (docs/architecture.md,
"what is not on the protocol"); cli.py adds them to the `curate` group."""
from __future__ import annotations

import json
from pathlib import Path

import click

from curation.config import resolve_dataset
from curation.embed.engines import ENGINES


def emit(summary, describe, as_json: bool) -> None:
    """Print a command's result: JSON with --json, else its description."""
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else describe(summary))


def model_folder(model_dir: Path) -> Path:
    """A model folder, or the workdir that holds one in model/."""
    if not (model_dir / "model.keras").exists() and (model_dir / "model" / "model.keras").exists():
        return model_dir / "model"
    return model_dir


@click.command()
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
    func = click.option("--engine", type=click.Choice(ENGINES),
                        help="What runs the model: onnx (ONNX Runtime, exported once beside "
                             "model.keras; ~2x faster on CPU) or keras [default: onnx when "
                             "onnxruntime is installed].")(func)
    func = click.option("--index", "index", metavar="DATASET",
                        help="Catalogue to look re-used photos up in: a dataset that `curate "
                             "dedupe` has hashed (its index is kept in its workdir).")(func)
    return click.argument("model_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path))(func)


def load_checker(model_dir: Path, index: str | None, index_workdir: Path | None,
                 index_threshold: int | None, engine: str | None):
    """The model (and catalogue) behind `check` and `serve`, loaded once."""
    from training.catalogue import load_catalogue
    from training.check import Checker

    catalogue = None
    if index is not None:
        config = resolve_dataset(index, click.get_current_context().obj["config_path"])
        catalogue = load_catalogue(index_workdir or config.default_workdir(), config.name,
                                   index_threshold, config.root, quiet=False)
    return Checker(model_folder(model_dir), catalogue=catalogue, engine=engine)


@click.command()
@check_options
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--claimed", metavar="LABEL", help="The model the seller claims for every IMAGE.")
@click.option("--claims", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV with columns path,claimed_label (paths relative to the CSV's folder).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every verdict to this file (.csv or .json).")
@click.option("--top-k", "-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
def check(model_dir, index, index_workdir, index_threshold, engine, images, claimed, claims, out,
          top_k, as_json):
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
    checker = load_checker(model_dir, index, index_workdir, index_threshold, engine)
    emit(claims_step.check_files(checker, pairs, out=out, k=top_k), claims_step.describe, as_json)


@click.command()
@check_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 serves other machines too).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-bytes", type=click.IntRange(1), default=20_000_000, show_default=True,
              help="Largest upload; bigger ones get HTTP 413.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True,
              help="Seconds a request's headers or body may stall before HTTP 408.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Most uploads run through the model in one call.")
def serve(model_dir, index, index_workdir, index_threshold, engine, host, port, max_bytes,
          timeout, max_batch):
    """Serve `curate check` as an HTTP API with an upload form, until Ctrl-C.

    \b
    Example: curate serve .curate/swift-wagonr/model --index swift-wagonr --port 8000
             curl -F image=@car.jpg -F claimed_label=swift http://127.0.0.1:8000/check
    POST /check, POST /check/batch, GET /health, GET /classes; the form at /, API docs at
    /docs. The model is loaded once; uploads arriving together share one model call.
    """
    from training import serve as serve_step

    checker = load_checker(model_dir, index, index_workdir, index_threshold, engine)
    serve_step.serve(checker, host=host, port=port, max_bytes=max_bytes, timeout=timeout,
                     max_batch=max_batch, announce=lambda text: click.echo(text, err=True))
