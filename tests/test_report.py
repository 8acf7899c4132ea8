"""The HTML report: one self-contained file whose sections show what the steps found."""
from __future__ import annotations

import json
import re
import shutil
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main
from curation import registry
from curation.report import html_page
from curation.demo import synthetic
from curation.config import DatasetConfig
from curation.manifest import read_manifest, read_run, record_run, write_manifest
from curation.report.step import build_report
from curation.scan.step import scan
from curation.split.step import split

SMALL = synthetic.SyntheticSpec(per_class=10, exact_duplicates=4, near_duplicates=4, mislabels=3,
                                off_topic=3, broken=2)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A synthetic set after scan and split (no dedupe, noise or model yet)."""
    out = tmp_path_factory.mktemp("report")
    truth = synthetic.generate(out / "data", seed=1, spec=SMALL)
    config = DatasetConfig(name="tiny", root=out / "data" / "images")
    workdir = out / "work"
    scan(config, workdir, workers=1, quiet=True)
    split(config, workdir, quiet=True)
    return config, workdir, truth


def sections(html: str) -> dict[str, str]:
    """Section id -> its HTML."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def test_report_is_one_file_with_embedded_thumbnails(scanned):
    config, workdir, truth = scanned
    summary = build_report(config, workdir)
    html = (workdir / "report.html").read_text()
    assert summary["report"] == str((workdir / "report.html").resolve())
    parts = sections(html)
    assert {"runs", "truth", "health", "duplicates", "noise", "split", "training", "evaluation",
            "lift"} <= set(parts)
    thumbnails = re.findall(r'<img alt="[^"]*" src="data:image/jpeg;base64,', parts["duplicates"])
    byte_copies = sum(d["how"] == "byte copy" for d in truth["exact_duplicates"])
    assert len(thumbnails) == 2 * byte_copies > 0   # each copy beside its source
    assert summary["thumbnails"] == 2 * byte_copies
    assert not re.search(r'src="(?!data:)', html), "every image must be inline"
    assert "SYNTHETIC" in html.split("<main>")[1][:400]   # the banner comes first


def test_sections_show_counts_or_say_what_to_run(scanned):
    config, workdir, _ = scanned
    build_report(config, workdir)
    parts = sections((workdir / "report.html").read_text())
    assert "empty file" in parts["health"] and "train" in parts["health"]
    assert "byte-identical files only" in parts["duplicates"]
    assert "cross the given splits" in parts["duplicates"]
    assert "curate flag-noise tiny" in parts["noise"]
    assert "curate train tiny" in parts["training"]
    assert "curate evaluate tiny" in parts["evaluation"]
    assert "(leak-free)" in parts["split"] and "unreadable" in parts["split"]
    truth = parts["truth"]
    assert "unreadable found" in truth and "1.000" in truth


def test_sections_wait_for_their_steps_record_not_for_their_html(scanned, tmp_path):
    config, scanned_work, _ = scanned
    work = tmp_path / "w"
    shutil.copytree(scanned_work, work)
    summary = build_report(config, work)
    assert summary["waiting_for"] == ["dedupe", "flag-noise", "review-sync", "train", "evaluate"]
    assert summary["incomplete"] == ["Duplicates and leaks", "Flagged noise", "Review",
                                     "Training", "Test metrics"]
    assert read_run(work, "report")["summary"]["report"] == summary["report"]
    manifest = read_manifest(work)   # flag-noise's columns without its record: still waiting
    manifest = manifest.assign(**{c: pd.NA for c in registry.FLAG_NOISE.adds})
    manifest = manifest.assign(noise_flag=False, noise_score=0.0)
    write_manifest(manifest, work)
    assert "Flagged noise" in build_report(config, work)["incomplete"]
    record_run(work, "flag-noise", settings={}, summary={"threshold": 0.5}, started=time.time())
    summary = build_report(config, work)
    noise = sections((work / "report.html").read_text())["noise"]
    assert "Flagged noise" not in summary["incomplete"] and "threshold: 0.5" in noise
    write_manifest(manifest.drop(columns="noise_flag"), work)   # a re-scan dropped a column
    assert "Flagged noise" in build_report(config, work)["incomplete"]


def test_text_from_folder_names_is_escaped(tmp_path, make_image):
    root = tmp_path / "data"
    for i in range(3):
        make_image(root / "<i>odd&co" / f"{i}.jpg", seed=i)
        make_image(root / "plain" / f"{i}.jpg", seed=10 + i)
    config = DatasetConfig(name="x<script>", root=root)
    scan(config, tmp_path / "w", workers=1, quiet=True)
    build_report(config, tmp_path / "w")
    html = (tmp_path / "w" / "report.html").read_text()
    assert "<i>odd" not in html and "&lt;i&gt;odd&amp;co" in html
    assert "x<script>" not in html and "x&lt;script&gt;" in html


def test_html_helpers_escape_and_format():
    assert html_page.esc('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert html_page.esc(None) == "—"
    table = html_page.table(["a", "b"], [["<x>", 0.5], ["y", 3]])
    assert "&lt;x&gt;" in table and '<td class="num">0.500</td>' in table
    assert '<td class="num">3</td>' in table


def test_cli_report_prints_where_it_wrote(scanned, tmp_path):
    config, workdir, _ = scanned
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(config.root), "--workdir", str(workdir),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and out.read_text().startswith("<!DOCTYPE html>")


def test_report_without_a_manifest_says_to_scan(tmp_path, class_tree):
    result = CliRunner().invoke(main, ["report", str(class_tree), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1 and "curate scan" in result.output


def test_cleaning_lift_appears_when_the_bench_wrote_it(scanned, tmp_path):
    config, workdir, _ = scanned
    lift = {"bench": "lift", "dataset": "tiny", "test_images": 40, "lift_test_accuracy": 0.09,
            "raw": {"test_accuracy": 0.71, "train_images": 200},
            "clean": {"test_accuracy": 0.8, "train_images": 170}}
    try:
        (workdir / "lift.json").write_text(json.dumps(lift))
        build_report(config, workdir)
        part = sections((workdir / "report.html").read_text())["lift"]
        assert "<th>raw</th><th>cleaned</th>" in part and "0.710" in part and "0.800" in part
        (workdir / "lift.json").write_text(json.dumps(lift | {"dataset": "other"}))
        build_report(config, workdir)
        part = sections((workdir / "report.html").read_text())["lift"]
        assert "measured on &#x27;other&#x27;" in part and "0.710" not in part
    finally:
        (workdir / "lift.json").unlink()
