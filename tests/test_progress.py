"""Progress when stderr is not a terminal (CI, nohup, a log file): a start line, a count with
rate and ETA every CURATE_PROGRESS_SECONDS, an end line; Keras's output labelled by phase."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from curation import parallel
from tests.conftest import REPO


def test_log_progress_prints_start_counts_with_rate_and_eta_and_end(monkeypatch, capsys):
    monkeypatch.setattr(parallel, "LOG_SECONDS", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert list(parallel.progress(range(3), desc="scan")) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "scan: started: 3 files"
    assert lines[1].startswith("scan: 1/3 files, ") and "file/s" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("scan: done: 3/3 files, ") and "elapsed" in lines[-1]
    parallel.progress_bar(total=0, desc="embed", unit="batch").close()   # nothing to do: silent
    assert capsys.readouterr().err == ""


def test_flag_noise_on_a_small_real_set_logs_progress_without_a_terminal(
        curate_data, curate_weights, tmp_path):
    source = curate_data / "stanford-cars-25"
    root = tmp_path / "data"
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:3]:
        (root / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:8]:
            shutil.copy(photo, root / folder.name / photo.name)
    # a count line per batch: the ONNX engine embeds 24 images in well under a second
    env = {**os.environ, "PYTHONPATH": str(REPO), "CURATE_PROGRESS_SECONDS": "0"}
    small = ["--backbone", "mobilenet_v1_025", "--no-tta", "--batch-size", "4"]
    for step, options in (("scan", []), ("flag-noise", small)):
        done = subprocess.run([sys.executable, str(REPO / "cli.py"), step, str(root),
                               "--workdir", str(tmp_path / "w"), *options], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("embed")]
    assert [line for line in lines if line.endswith(": started: 24 imgs")], lines
    counts = [line for line in lines if "ETA" in line]
    assert counts and all("img/s" in line for line in counts), lines
    assert [line for line in lines if ": done: 24/24 imgs" in line], lines
