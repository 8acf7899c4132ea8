"""`curate check` on files: read the claims (a CSV or one label for many images), check them in
batches, write the verdicts as CSV or JSON, and summarize."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from curation.errors import CurateError
from curation.manifest import atomic_write, atomic_write_text

from .check import Checker, Upload, summarize

CSV_COLUMNS = ["name", "claimed_label", "verdict", "reason", "predicted", "probability",
               "claimed_probability", "ood_distance", "duplicate_path", "duplicate_label"]


class ClaimsError(CurateError):
    """The claims cannot be used: a missing column, no photos, or labels the model lacks."""

    exit_code = 2


def read_claims(images, claimed: str | None, claims_csv: Path | None) -> list[tuple[Path, str]]:
    """(path, claimed label) pairs: IMAGES with --claimed, and/or the rows of a claims CSV
    (columns path, claimed_label; relative paths resolve against the CSV's folder)."""
    if images and claimed is None:
        raise ClaimsError("give the claimed label of the IMAGES with --claimed LABEL")
    pairs = [(Path(p), claimed) for p in images]
    if claims_csv is not None:
        try:
            table = pd.read_csv(claims_csv, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ClaimsError(f"{claims_csv}: not a readable CSV ({exc})") from None
        missing = {"path", "claimed_label"} - set(table.columns)
        if missing:
            raise ClaimsError(f"{claims_csv}: lacks column(s) {', '.join(sorted(missing))} "
                              f"(expected path,claimed_label)")
        folder = Path(claims_csv).parent
        pairs += [(folder / p, label.strip()) for p, label in zip(table["path"],
                                                                   table["claimed_label"])]
    if not pairs:
        raise ClaimsError("no photos to check: give IMAGES... --claimed LABEL or --claims CSV")
    return pairs


def check_unknown_labels(pairs: list[tuple[Path, str]], classes: list[str]) -> None:
    """Refuse, before any work, claims naming a label the model was not trained on."""
    bad = [(path, label) for path, label in pairs if label not in classes]
    if bad:
        shown = "; ".join(f"{path}: {label!r}" for path, label in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ClaimsError(f"unknown claimed label for {len(bad)} photo(s): {shown}{more}; "
                          f"valid labels: {', '.join(classes)}")


def _upload(checker: Checker, path: Path) -> Upload:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Upload(str(path), error=f"unreadable: {exc.strerror or exc}")
    return checker.read(str(path), data)


def check_files(checker: Checker, pairs: list[tuple[Path, str]], *, out: Path | None = None,
                k: int = 3, batch_size: int = 32) -> dict:
    """Verdicts for every (path, claimed label), in order; written to `out` (.csv or .json)."""
    check_unknown_labels(pairs, checker.classes)
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        uploads = [_upload(checker, path) for path, _ in chunk]
        results += checker.check(uploads, [label for _, label in chunk], k=k)
    report = {"summary": summarize(results), "results": results,
              "out": str(out) if out else None}
    if out is not None:
        write_results(results, Path(out))
    return report


def results_table(results: list[dict]) -> pd.DataFrame:
    """One CSV row per photo (the duplicate's path and label flattened, top-k left out)."""
    rows = [{**r, "duplicate_path": (r.get("duplicate_of") or {}).get("path"),
             "duplicate_label": (r.get("duplicate_of") or {}).get("label")} for r in results]
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def write_results(results: list[dict], out: Path) -> None:
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(results, indent=2))
    else:
        atomic_write(out, lambda tmp: results_table(results).to_csv(tmp, index=False))


def describe(report: dict) -> str:
    """One line per photo that is not ok, then the counts per verdict."""
    lines = [f"{r['name']}: {r['verdict']}" + (f" ({r['reason']})" if r.get("reason") else "")
             for r in report["results"] if r["verdict"] != "ok"]
    counts = report["summary"]["verdicts"]
    lines.append(f"Checked {report['summary']['photos']} photos: "
                 + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    if report["out"]:
        lines.append(f"Wrote {report['out']}")
    return "\n".join(lines)
