"""The synthetic demo set: deterministic, and its ground truth describes the files it wrote."""
from __future__ import annotations

import hashlib
import os

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import ImageOps

from curation.demo import synthetic
from curation.config import DatasetConfig
from curation.images import ImageError, load_image, probe
from curation.report.truth import score
from curation.scan.step import scan

SMALL = synthetic.SyntheticSpec(per_class=12, exact_duplicates=4, near_duplicates=6, mislabels=4,
                                off_topic=4, broken=2)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, synthetic.generate(out, seed=3, spec=SMALL)


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def phash(path, mirror=False):
    image = load_image(path)
    return imagehash.phash(ImageOps.mirror(image) if mirror else image)


def test_same_seed_same_files_other_seed_other_files(made, tmp_path):
    out, _ = made
    synthetic.generate(tmp_path / "again", seed=3, spec=SMALL)
    synthetic.generate(tmp_path / "other", seed=4, spec=SMALL)
    first = digests(out / "images")
    assert digests(tmp_path / "again" / "images") == first
    shared = set(digests(tmp_path / "other" / "images").values()) & set(first.values())
    assert shared <= {hashlib.sha256(b"").hexdigest()}   # only the planted empty file


def test_counts_and_readme_say_synthetic(made):
    out, truth = made
    files = [p for p in (out / "images").rglob("*") if p.is_file()]
    assert len(files) == truth["counts"]["files"] == 5 * 12 + 4 + 6 + 4 + 2
    assert truth["synthetic"] is True
    assert (out / "README.md").read_text().startswith("# SYNTHETIC data")
    assert {p.relative_to(out / "images").parts[0] for p in files} == {"train", "test"}


def test_planted_duplicates_are_copies_of_their_source(made):
    out, truth = made
    root = out / "images"
    for item in truth["exact_duplicates"]:
        copy, source = root / item["path"], root / item["of"]
        if item["how"] == "byte copy":
            assert copy.read_bytes() == source.read_bytes()
        else:
            assert copy.suffix == ".png"
            assert np.array_equal(np.asarray(load_image(copy)), np.asarray(load_image(source)))
    for item in truth["near_duplicates"]:
        copy, source = root / item["path"], root / item["of"]
        assert copy.read_bytes() != source.read_bytes()
        distance = min(phash(copy) - phash(source), phash(copy, mirror=True) - phash(source))
        assert distance <= 8, item
    crossing = [d for d in truth["exact_duplicates"] + truth["near_duplicates"]
                if d["path"].split("/")[0] != d["given_split_of"]]
    assert crossing, "some planted copies must cross train/test"


def test_distinct_pictures_are_far_apart_in_phash(made):
    out, truth = made
    copies = {d["path"] for kind in ("exact_duplicates", "near_duplicates", "unreadable")
              for d in truth[kind]}
    hashes = np.array([phash(out / "images" / p).hash.ravel() for p in truth["true_labels"]
                       if p not in copies])
    distances = (hashes[:, None, :] != hashes[None, :, :]).sum(axis=-1)
    np.fill_diagonal(distances, 64)
    assert distances.min() >= 12


def test_mislabels_sit_in_another_class_folder_and_broken_files_fail(made):
    out, truth = made
    for item in truth["mislabels"]:
        assert item["path"].split("/")[1] == item["label"] != item["true_label"]
    for item in truth["off_topic"]:
        assert item["true_label"] is None and item["scene"] in synthetic.SCENES
    for item in truth["unreadable"]:
        with pytest.raises(ImageError):
            probe(out / "images" / item["path"])


def test_scan_sees_what_was_planted(made, tmp_path):
    out, truth = made
    summary = scan(DatasetConfig(name="s", root=out / "images"), tmp_path / "w", quiet=True)
    assert summary["unreadable"] == len(truth["unreadable"])
    assert summary["layout"] == "split_class_folders"
    assert sum(summary["classes"].values()) == truth["counts"]["files"] - len(truth["unreadable"])


def test_existing_set_is_reused_and_foreign_folders_refused(made, tmp_path):
    out, _ = made
    some = next((out / "images").rglob("*.jpg"))
    before = os.stat(some).st_mtime_ns
    synthetic.generate(out, seed=3, spec=SMALL)
    assert os.stat(some).st_mtime_ns == before
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path / "photos", seed=3, spec=SMALL)
    assert (tmp_path / "photos" / "mine.jpg").read_bytes() == b"x"


def perfect_manifest(truth: dict) -> pd.DataFrame:
    """A manifest as a perfect pipeline would leave it."""
    source = {d["path"]: d["of"] for kind in ("exact_duplicates", "near_duplicates") for d in truth[kind]}
    broken = {d["path"] for d in truth["unreadable"]}
    noise = {d["path"]: "mislabel" for d in truth["mislabels"]} | {
        d["path"]: "non_car" for d in truth["off_topic"]}
    rows = pd.DataFrame({"path": list(truth["true_labels"])})
    sources = rows["path"].map(lambda p: source.get(p, p))
    shared = sources.duplicated(keep=False)
    rows["dup_group"] = pd.Series(pd.factorize(sources)[0], dtype="Int64").where(shared)
    rows["readable"] = ~rows["path"].isin(broken)
    rows["noise_flag"] = rows["path"].isin(noise)
    rows["noise_reason"] = rows["path"].map(noise)
    rows["suggested_label"] = rows["path"].map(truth["true_labels"]).where(rows["noise_flag"])
    return rows


def test_score_of_a_perfect_and_of_an_empty_result(made):
    _, truth = made
    good = score(perfect_manifest(truth), truth)
    for key in ("exact_duplicates_found", "near_duplicates_found", "mislabels_flagged",
                "off_topic_reason_right", "mislabels_suggestion_right", "unreadable_found"):
        assert good[key]["rate"] == 1.0, key
    assert good["false_duplicate_groups"] == 0 and good["noise_precision"]["rate"] == 1.0
    bad = perfect_manifest(truth).assign(dup_group=0, noise_flag=False, readable=True)
    poor = score(bad, truth)
    assert poor["false_duplicate_groups"] == 1
    assert poor["mislabels_flagged"]["rate"] == 0 and poor["unreadable_found"]["rate"] == 0
