"""`curate run` end to end on the synthetic set: every step, resume, --until/--from, failures, demo."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from curation.demo import step as demo
from curation import pipeline, registry
from curation.demo import synthetic
from curation.config import ConfigError, DatasetConfig, TrainingSettings
from curation.manifest import read_manifest
from curation.report.truth import score
from curation.settings import SettingError
from curation.steps import fingerprint

SPEC = synthetic.SyntheticSpec(per_class=14, exact_duplicates=4, near_duplicates=6, mislabels=4,
                               off_topic=4, broken=2)
TINY = TrainingSettings(epochs=2, fine_tune_epochs=0, batch_size=16, patience=2, augment=False)


def weights() -> str:
    """ImageNet weights from $CURATE_WEIGHTS when there, else random init (offline CI)."""
    folder = os.environ.get("CURATE_WEIGHTS")
    return "imagenet" if folder and os.path.isdir(folder) else "none"


def tiny_config(root) -> DatasetConfig:
    return DatasetConfig(name="tiny", root=root, image_size=64, weights=weights(), training=TINY)


def statuses(summary: dict) -> dict[str, str]:
    return {entry["step"]: entry["status"] for entry in summary["steps"]}


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """One workdir through a sequence of runs; each run's summary is kept for the tests below."""
    base = tmp_path_factory.mktemp("pipeline")
    truth = synthetic.generate(base / "data", seed=5, spec=SPEC)
    config = tiny_config(base / "data" / "images")
    workdir = base / "work"
    runs = {"until_split": pipeline.run_pipeline(config, workdir, until="split", quiet=True)}
    runs["until_split_again"] = pipeline.run_pipeline(config, workdir, until="split", quiet=True)
    runs["full"] = pipeline.run_and_report(config, workdir, quiet=True)
    runs["full_again"] = pipeline.run_pipeline(config, workdir, quiet=True)
    runs["from_evaluate"] = pipeline.run_pipeline(config, workdir, from_step="evaluate", quiet=True)
    runs["split_before_new_seed"] = read_manifest(workdir)["split"].copy()
    runs["new_seed"] = pipeline.run_pipeline(config, workdir, until="split", quiet=True,
                                             settings={"seed": 1})
    return {"config": config, "workdir": workdir, "truth": truth, "runs": runs}


def test_first_run_does_each_step_once_in_order(journey):
    first = journey["runs"]["until_split"]
    assert [e["step"] for e in first["steps"]] == ["scan", "dedupe", "embed", "flag-noise",
                                                         "split"]
    assert set(statuses(first).values()) == {"ran"}
    assert all(e["seconds"] >= 0 and e["text"] for e in first["steps"])
    manifest = read_manifest(journey["workdir"])
    assert {"dup_group", "noise_flag", "split"} <= set(manifest.columns)


def test_pipeline_finds_what_was_planted(journey):
    manifest = read_manifest(journey["workdir"])
    found = score(manifest, journey["truth"])
    assert found["exact_duplicates_found"]["rate"] == 1.0
    assert found["near_duplicates_found"]["rate"] >= 0.8
    assert found["false_duplicate_groups"] == 0
    assert found["unreadable_found"]["rate"] == 1.0
    assert found["leaking_groups_after_split"] == 0
    if weights() == "imagenet":   # random-init embeddings cannot be expected to find noise
        assert found["off_topic_flagged"]["rate"] >= 0.75


def test_second_run_skips_finished_steps(journey):
    again = statuses(journey["runs"]["until_split_again"])
    assert again == {"scan": "ran", "dedupe": "skipped", "embed": "skipped", "flag-noise": "skipped",
                     "split": "skipped"}
    full = statuses(journey["runs"]["full"])
    assert full["split"] == "skipped" and full["train"] == "ran" and full["evaluate"] == "ran"
    rerun = statuses(journey["runs"]["full_again"])
    assert [s for s, status in rerun.items() if status == "ran"] == ["scan"]


def test_from_reruns_that_step_only_when_later_ones_are_current(journey):
    summary = journey["runs"]["from_evaluate"]
    assert statuses(summary) == {"evaluate": "ran"}
    metrics = json.loads((journey["workdir"] / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["test_images"] > 0


def test_another_seed_re_splits_instead_of_refusing(journey):
    assert statuses(journey["runs"]["new_seed"])["split"] == "ran"
    after = read_manifest(journey["workdir"])["split"]
    assert not after.equals(journey["runs"]["split_before_new_seed"])


def test_full_run_writes_report_with_model_sections(journey):
    report = journey["runs"]["full"]["report"]
    html = open(report).read()
    for needle in ("Confusion matrix (test)", 'alt="training curves"', 'alt="confusion matrix"',
                   "Planted vs found (synthetic)", "Flagged noise"):
        assert needle in html
    assert "No model yet" not in html and "No test metrics yet" not in html


def test_new_file_reruns_the_steps_that_read_it(journey, tmp_path):
    config, workdir, truth = journey["config"], journey["workdir"], journey["truth"]
    source = next(p for p, label in truth["true_labels"].items() if label and p.startswith("train/"))
    copy = "train/" + source.split("/")[1] + "/added_copy.jpg"
    shutil.copyfile(config.root / source, config.root / copy)
    try:
        summary = pipeline.run_pipeline(config, workdir, until="dedupe", quiet=True)
        assert statuses(summary) == {"scan": "ran", "dedupe": "ran"}
        manifest = read_manifest(workdir).set_index("path")
        assert manifest.at[copy, "dup_group"] == manifest.at[source, "dup_group"]
    finally:
        (config.root / copy).unlink()


def test_failing_step_stops_with_its_name_and_resumes(tmp_path):
    synthetic.generate(tmp_path / "data", seed=6, spec=SPEC)
    root, workdir = tmp_path / "data" / "images", tmp_path / "work"
    args = ["run", str(root), "--workdir", str(workdir), "--until", "flag-noise", "--image-size", "64"]
    result = CliRunner().invoke(main, [*args, "--weights", str(tmp_path / "missing.h5")])
    assert result.exit_code == 1
    assert "step 'embed' failed" in result.output and "missing.h5" in result.output
    assert "resumes at 'embed'" in result.output and "Traceback" not in result.output
    recorded = {path.stem for path in (workdir / "runs").glob("*.json")}
    assert recorded == {"scan", "dedupe", "report"}     # embed recorded nothing
    assert (workdir / "report.html").is_file()          # the partial report
    waiting = json.loads((workdir / "runs" / "report.json").read_text())["summary"]
    assert waiting["waiting_for"][:1] == ["flag-noise"]
    result = CliRunner().invoke(main, [*args, "--weights", weights(), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert statuses(json.loads(result.output)) == {"scan": "ran", "dedupe": "skipped",
                                                   "embed": "ran", "flag-noise": "ran"}


def test_step_names_and_overrides_are_checked():
    assert pipeline.steps_between("split", None) == ["split", "train", "evaluate"]
    assert pipeline.steps_between(None, "dedupe") == ["scan", "dedupe"]
    with pytest.raises(ConfigError, match="comes after"):
        pipeline.steps_between("train", "scan")
    with pytest.raises(ConfigError, match="unknown step 'tidy'"):
        pipeline.steps_between("tidy", None)


def test_run_settings_are_checked_before_any_step(tmp_path):
    config = DatasetConfig(name="x", root=tmp_path)
    train = registry.BY_NAME["train"]
    tuned = pipeline.planned(train, config, tmp_path, {"image_size": 96, "epochs": 1})
    assert tuned.image_size == 96 and tuned.epochs == 1
    assert tuned.batch_size == config.training.batch_size              # datasets.yaml's
    with pytest.raises(SettingError, match=r"option --image-size \(setting 'image_size'\)"):
        pipeline.run_pipeline(config, tmp_path / "w", settings={"image_size": 8})
    assert not (tmp_path / "w" / "manifest.parquet").exists()         # nothing ran
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['colour'\]"):
        pipeline.run_pipeline(config, tmp_path / "w", settings={"colour": "red"})


def test_demo_finds_weights_the_user_has_else_downloads_else_trains_from_scratch(
        tmp_path, monkeypatch):
    from training.scratch import SCRATCH

    monkeypatch.delenv("CURATE_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(demo, "CHECKOUT", tmp_path / "checkout")
    assert demo.weight_folders() == [tmp_path / "keras" / "models", tmp_path / "shared" / "weights"]
    chosen, note = demo.choose_weights(synthetic=True, is_online=lambda: False)
    assert chosen == SCRATCH and note.startswith("NOTE") and "CURATE_WEIGHTS" in note
    with pytest.raises(ConfigError, match="Set CURATE_WEIGHTS to a folder holding "
                                          "mobilenet_v2_1.0_224_no_top.weights.h5"):
        demo.choose_weights(synthetic=False, is_online=lambda: False)
    assert demo.choose_weights(synthetic=False, is_online=lambda: True)[0] == "imagenet"
    for folder in (tmp_path / "keras" / "models", tmp_path / "shared" / "weights"):
        cached = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"weights")
        assert demo.choose_weights(synthetic=False, is_online=lambda: True)[0] == str(cached)
        cached.unlink()
    monkeypatch.setenv("CURATE_WEIGHTS", str(tmp_path / "mine"))
    assert demo.weight_folders()[0] == tmp_path / "mine"
    assert set(demo.skipped_steps(SCRATCH)) == {"embed", "flag-noise"}
    assert demo.skipped_steps("imagenet") == {}
    monkeypatch.delenv("CURATE_DATA", raising=False)
    config, text = demo.demo_dataset(tmp_path / "demo", seed=0)
    assert demo.is_synthetic(config) and text.startswith("SYNTHETIC")
    assert tmp_path / "demo" in config.root.parents
    (tmp_path / "shared" / demo.REAL_DEMO).mkdir(parents=True)
    monkeypatch.setenv("CURATE_DATA", str(tmp_path / "shared"))
    real, text = demo.demo_dataset(tmp_path / "demo")
    assert real.root == (tmp_path / "shared" / demo.REAL_DEMO).resolve() and "real photos" in text
    assert demo.is_synthetic(demo.demo_dataset(tmp_path / "demo", synthetic=True)[0])


def test_fingerprints_follow_what_each_step_reads(tmp_path):
    import pandas as pd

    files = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "bytes": [1, 2], "mtime": [1.0, 2.0],
                          "sha256": ["x", "y"], "readable": [True, True], "label": ["p", "q"],
                          "width": [4, 4], "height": [4, 4]})
    reviewed = files.assign(review_decision=["drop", None], review_label=[None, None])
    changed = files.assign(bytes=[1, 3])

    def print_(name, frame, settings=None):
        return fingerprint(registry.BY_NAME[name], settings or {}, tmp_path, frame)

    assert print_("dedupe", files) == print_("dedupe", files.iloc[::-1])   # row order is irrelevant
    assert print_("dedupe", files) != print_("dedupe", changed)
    assert print_("dedupe", files) == print_("dedupe", reviewed)           # review is for split
    assert print_("split", files) != print_("split", reviewed)
    assert print_("split", files) != print_("split", files, {"seed": 1})
    assert print_("dedupe", files, {"workers": 1}) == print_("dedupe", files)   # no result change
    (tmp_path / "runs").mkdir()
    before = print_("evaluate", files)
    (tmp_path / "runs" / "train.json").write_text('{"step": "train", "fingerprint": "new"}')
    assert print_("evaluate", files) != before                              # the model changed


def test_a_manual_run_stays_in_force_and_run_takes_every_steps_options(tmp_path):
    synthetic.generate(tmp_path / "data", seed=7, spec=SPEC)
    root, workdir = str(tmp_path / "data" / "images"), str(tmp_path / "work")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, [*args, root, "--workdir", workdir, "--json", "-q"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    run("scan")
    assert run("dedupe", "--threshold", "4")["thresholds"] == {"phash": 4, "dhash": 4}
    assert statuses(run("run", "--until", "dedupe")) == {"scan": "ran", "dedupe": "skipped"}
    again = run("run", "--until", "dedupe", "--hash", "phash", "--threshold", "5", "--no-mirror")
    assert statuses(again)["dedupe"] == "ran"
    record = json.loads((tmp_path / "work" / "runs" / "dedupe.json").read_text())
    assert record["settings"]["kinds"] == ["phash"] and record["settings"]["mirror"] is False
    assert record["settings"]["thresholds"] == {"phash": 5}
    result = runner.invoke(main, ["run", root, "--workdir", workdir, "--until", "dedupe",
                                  "--max-flag-rate", "0"])
    assert result.exit_code == 2 and "--max-flag-rate" in result.output


@pytest.mark.slow
def test_demo_without_any_weights_trains_a_small_cnn_that_learns(tmp_path, monkeypatch):
    """The README's first command, offline with no weights anywhere: the synthetic demo must
    still give a model that learned (a frozen random backbone gave 0.15 test accuracy)."""
    for name in ("CURATE_WEIGHTS", "CURATE_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(demo, "CHECKOUT", tmp_path / "checkout")
    monkeypatch.setattr(demo, "online", lambda: False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    steps = {entry["step"]: entry for entry in summary["steps"]}
    for skipped in ("embed", "flag-noise"):
        assert steps[skipped]["status"] == "skipped" and "ImageNet" in steps[skipped]["reason"]
    assert steps["train"]["summary"]["backbone"] == "small_cnn"
    workdir = tmp_path / ".curate" / "demo" / "synthetic-vehicles"   # the default folder
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8, metrics                     # chance is 0.2
