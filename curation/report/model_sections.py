"""The report's model sections: training curves, test metrics and confusion matrix, cleaning lift."""
from __future__ import annotations

import json
from pathlib import Path

from curation.report import html_page as h
from curation.report.context import Context, Section

LIFT_FILE = "lift.json"
TRAIN_FIGURES = ("val_accuracy", "val_loss", "best_epoch", "classes", "train_images", "val_images",
                 "embed_images_per_second", "fine_tune_images_per_second", "seconds")
TEST_FIGURES = ("accuracy", "macro_f1", "test_images", "seconds")
LIFT_FIGURES = ("lift_test_accuracy", "lift_test_macro_f1", "test_images", "classes")


def find_file(workdir: Path, *patterns: str) -> Path | None:
    """The first file in the workdir (or its model/ or plots/ folder) matching a glob pattern."""
    for pattern in patterns:
        for folder in (workdir, workdir / "model", workdir / "plots"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Scalar leaves of a nested dict as (dotted key, value), lists of scalars joined."""
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{name}."))
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 12:
                rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, value))
    return rows


def scalars(data: dict, keys=None) -> list[tuple[str, object]]:
    """Numbers of a dict (the given keys in order when present, else every top-level number)."""
    names = [k for k in keys if k in data] if keys else list(data)
    return [(k.replace("_", " "), round(data[k], 4) if isinstance(data[k], float) else data[k])
            for k in names if isinstance(data[k], (int, float)) and not isinstance(data[k], bool)]


def per_class_table(per_class: dict) -> str:
    """A table from {class: {metric: value}}."""
    metrics = sorted({m for values in per_class.values() if isinstance(values, dict) for m in values})
    rows = [[name, *[int(values[m]) if m == "support" and m in values else values.get(m)
                     for m in metrics]] for name, values in per_class.items() if isinstance(values, dict)]
    return h.table(["class", *metrics], rows)


def training_section(ctx: Context) -> str:
    record = ctx.runs["train"]
    summary = record.get("summary", {})
    body = h.stats(scalars(summary, TRAIN_FIGURES) or scalars(summary))
    if summary.get("best_phase"):
        body += h.paragraph(f"Best epoch from the {summary['best_phase']} phase; backbone "
                            f"{summary.get('backbone')} at {summary.get('image_size')} px on "
                            f"{summary.get('device', '?')} ({summary.get('backend', '?')}).")
    curves = find_file(ctx.workdir, "*curve*.png", "*history*.png", "training*.png")
    body += h.plot(curves, "training curves") if curves else h.missing("No training-curves PNG found.")
    settings = flatten(record.get("settings", {}))
    if settings:
        body += "<h3>Settings</h3>" + h.table(["setting", "value"], settings)
    return body


def evaluation_section(ctx: Context) -> str:
    """Test metrics: metrics.json in the workdir, else the summary evaluate recorded (an
    evaluation run with --model-dir writes its files beside that model)."""
    metrics = read_json(ctx.workdir / "metrics.json") or ctx.runs["evaluate"].get("summary", {})
    body = h.stats(scalars(metrics, TEST_FIGURES) or scalars(metrics))
    if isinstance(metrics.get("guard_on_test"), dict):
        body += h.paragraph("The not-a-car / unsure guard on test cars: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in flatten(metrics["guard_on_test"])) + ".")
    confusion = find_file(ctx.workdir, "*confusion*.png")
    body += ("<h3>Confusion matrix (test)</h3>" + h.plot(confusion, "confusion matrix") if confusion
             else h.missing("No confusion-matrix PNG found."))
    per_class = next((metrics[k] for k in ("per_class", "classes", "report") if
                      isinstance(metrics.get(k), dict)), None)
    if per_class:
        body += "<h3>Per class (test)</h3>" + per_class_table(per_class)
    wrong = find_file(ctx.workdir, "*misclass*.png", "*errors*.png")
    if wrong:
        body += "<h3>Misclassified test images</h3>" + h.plot(wrong, "misclassified examples")
    return body


def lift_section(ctx: Context) -> str:
    """Not made by a step: bench/lift_bench.py writes lift.json when someone measures it."""
    config, workdir = ctx.config, ctx.workdir
    lift = read_json(find_file(workdir, LIFT_FILE, "lift*.json"))
    if not lift:
        return h.missing(f"Cleaning lift not measured for this dataset: `python bench/lift_bench.py "
                         f"--dataset {config.name} > {workdir / LIFT_FILE}` measures it.")
    if lift.get("dataset", config.name) != config.name:
        return h.missing(f"{LIFT_FILE} here was measured on '{lift['dataset']}', not '{config.name}'.")
    body = h.paragraph("The same recipe trained on the raw data with planted noise and on the data "
                       "after dedupe + flag-noise + a leak-free split, both scored on the same clean "
                       "test set.")
    body += h.stats(scalars(lift, LIFT_FIGURES) or scalars(lift))
    raw, clean = lift.get("raw"), lift.get("clean")
    if isinstance(raw, dict) and isinstance(clean, dict):
        raw_rows, clean_rows = dict(flatten(raw)), dict(flatten(clean))
        keys = [k for k in raw_rows if k in clean_rows] + [k for k in clean_rows if k not in raw_rows]
        body += h.table(["measure", "raw", "cleaned"],
                        [[k, raw_rows.get(k), clean_rows.get(k)] for k in keys])
    rest = {k: v for k, v in lift.items() if k not in ("raw", "clean")}
    return body + h.table(["setting", "value"], flatten(rest))


def model_sections() -> list[Section]:
    return [Section("training", "Training", training_section, "train",
                    "No model yet: run `curate train {name}`."),
            Section("evaluation", "Test metrics", evaluation_section, "evaluate",
                    "No test metrics yet: run `curate evaluate {name}`."),
            Section("lift", "Cleaning lift", lift_section)]
