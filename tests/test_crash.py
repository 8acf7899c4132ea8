"""Crash safety, end to end: SIGKILL, SIGTERM and Ctrl-C of real `python cli.py` runs on generated
images, a garbled manifest, a full disk, and a second run on a busy workdir."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main
from curation import lifecycle, safety
from curation.manifest import WorkdirBusy, workdir_lock
from tests.conftest import REPO, synthetic_photo

N_IMAGES = 240


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes x 80 distinct 320x240 JPEGs: a 2-worker pool runs for a few tenths of a second."""
    root = tmp_path_factory.mktemp("crash") / "data"
    for i in range(N_IMAGES):
        path = root / f"c{i % 3}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, (320, 240)).save(path)
    return root


def curate(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(*args: str) -> subprocess.CompletedProcess:
    process = curate(*args)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is pid, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_when_pooled(process: subprocess.Popen, signum: int, *, group: bool = False) -> list[int]:
    """Wait until the run has started its worker pool, send signum to the parent alone (or to
    its whole process group, as a terminal's Ctrl-C does)."""
    deadline = time.time() + 60
    while not (workers := children(process.pid)):
        assert process.poll() is None, f"finished before its pool started: {process.stderr.read()}"
        assert time.time() < deadline, "no worker pool started"
        time.sleep(0.002)
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    return workers


def wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.time() + seconds
    while (left := [p for p in pids if alive(p)]) and time.time() < deadline:
        time.sleep(0.02)
    return left


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("step", ["scan", "dedupe"])
def test_sigkill_mid_pool_frees_the_workdir_and_a_rerun_matches_a_clean_run(photos, tmp_path, step):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for workdir in (clean, killed):
        if step != "scan":
            assert finish("scan", str(photos), "--workdir", str(workdir), "-q").returncode == 0
    clean_run = finish(step, str(photos), "--workdir", str(clean), "-q", "--workers", "2")
    assert clean_run.returncode == 0
    before = (killed / "manifest.parquet").read_bytes() if step != "scan" else None

    process = curate(step, str(photos), "--workdir", str(killed), "-q", "--workers", "2")
    workers = signal_when_pooled(process, signal.SIGKILL)
    process.communicate(timeout=30)
    assert wait_gone(workers) == [], "pool workers outlived their SIGKILLed parent"
    if before is not None:   # killed mid-pool, before its write: the old manifest, untouched
        assert (killed / "manifest.parquet").read_bytes() == before

    rerun = finish(step, str(photos), "--workdir", str(killed), "-q", "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    ours, theirs = (pd.read_parquet(w / "manifest.parquet") for w in (killed, clean))
    pd.testing.assert_frame_equal(ours, theirs)


@needs_proc
@pytest.mark.parametrize(("signum", "code", "name", "group"),
                         [(signal.SIGTERM, 143, "SIGTERM", False),
                          (signal.SIGINT, 130, "Ctrl-C", False),
                          (signal.SIGINT, 130, "Ctrl-C", True)])
def test_sigterm_and_ctrl_c_mid_pool_give_one_line_and_the_shell_exit_code(
        photos, tmp_path, signum, code, name, group):
    process = curate("scan", str(photos), "--workdir", str(tmp_path), "-q", "--workers", "2",
                     start_new_session=True)
    workers = signal_when_pooled(process, signum, group=group)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith(f"Error: curate scan stopped by {name}") and "run it again" in err
    assert wait_gone(workers) == []
    assert not (tmp_path / "manifest.parquet").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]   # nothing half-written


# Where each step is signalled: while it reads its manifest, or (evaluate, which needs a model
# first) while it loads the model.
SIGNALLED_AT = {step: (safety, "read_parquet_checked") for step in
                ("dedupe", "flag-noise", "split", "check-leaks", "train", "report", "review")}


@pytest.mark.parametrize("command", [*SIGNALLED_AT, "evaluate"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_any_step_is_one_line_with_its_exit_code(class_tree, tmp_path, monkeypatch,
                                                             command, signum, code):
    import training.evaluate

    runner = CliRunner()
    workdir = tmp_path / "w"
    assert runner.invoke(main, ["scan", str(class_tree), "--workdir", str(workdir),
                                "-q"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    module, name = SIGNALLED_AT.get(command, (training.evaluate, "Predictor"))
    unsignalled = getattr(module, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return unsignalled(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)
    result = runner.invoke(main, [command, str(class_tree), "--workdir", str(workdir), "-q"])
    assert result.exit_code == code, result.output
    assert result.output.strip().startswith(f"Error: curate {command} stopped by")
    assert len(result.output.strip().splitlines()) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handler restored after
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after == {**before, ".lock": b""}   # nothing written, the lock left free


def test_a_swallowed_sigterm_still_stops_the_step_before_it_writes(class_tree, tmp_path,
                                                                   monkeypatch):
    """Python drops an exception raised by a handler inside an at-fork hook; the signal noted by
    the handler must still stop the run before it renames anything into place."""
    runner = CliRunner()
    workdir = tmp_path / "w"
    assert runner.invoke(main, ["scan", str(class_tree), "--workdir", str(workdir)]).exit_code == 0
    before = (workdir / "manifest.parquet").read_bytes()
    read = safety.read_parquet_checked

    def swallowed(path):
        lifecycle._signalled.append(signal.SIGTERM)   # what the handler notes before it raises
        return read(path)

    monkeypatch.setattr(safety, "read_parquet_checked", swallowed)
    result = runner.invoke(main, ["dedupe", str(class_tree), "--workdir", str(workdir), "-q"])
    assert result.exit_code == 143 and "stopped by SIGTERM" in result.output
    assert (workdir / "manifest.parquet").read_bytes() == before
    assert not (workdir / "dupes.csv").exists()


POOL_SCRIPT = """
import os, signal, sys, time
from curation.lifecycle import signals_as_interrupts
from curation.parallel import map_files
{setup}
try:
    with signals_as_interrupts():
        map_files(time.sleep, [30] * 8, workers=2, quiet=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


def run_pool_script(setup: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT.format(setup=setup)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (workers := children(process.pid)) and process.poll() is None:
        assert time.time() < deadline, "no worker pool started"
        time.sleep(0.002)
    return process, workers


@needs_proc
def test_a_signal_while_the_pool_starts_its_workers_stops_every_one_and_exits():
    """Ctrl-C landing while a worker is being forked: raised once that worker is on record (a
    worker started but not yet noted by the pool used to wait for work forever, and Python's
    exit waited for it), never inside the new worker."""
    process, workers = run_pool_script(
        "os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))")
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130 and err == ""
    assert wait_gone(workers) == []


@needs_proc
def test_a_worker_killed_mid_result_does_not_hang_the_exit():
    """A worker SIGKILLed while sending a large result (train's decoded pixels) leaves part of a
    message in the result pipe: the pool's reader must see end-of-file, not wait for the rest."""
    process, workers = run_pool_script(
        "import struct, threading\n"
        "from curation import lifecycle\n"
        "pool_class = lifecycle.ProcessPoolExecutor\n"
        "def cut_off(pool):   # a header promising 1 MB, then only part of it\n"
        "    time.sleep(0.5)\n"
        "    os.write(pool._result_queue._writer.fileno(), struct.pack('!i', 1 << 20) + b'part')\n"
        "    time.sleep(0.5)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "class Pool(pool_class):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        threading.Thread(target=cut_off, args=(self,), daemon=True).start()\n"
        "lifecycle.ProcessPoolExecutor = Pool")
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130 and err == ""
    assert wait_gone(workers) == []


def test_garbled_manifest_is_one_line_naming_it_and_the_bak_restores(class_tree, tmp_path):
    workdir = tmp_path / "w"
    for step in ("scan", "dedupe"):
        assert finish(step, str(class_tree), "--workdir", str(workdir), "-q").returncode == 0
    manifest = workdir / "manifest.parquet"
    backup = workdir / "manifest.parquet.bak"
    scanned = pd.read_parquet(backup).columns.tolist()   # the version before dedupe's write
    assert scanned == pd.read_parquet(manifest).columns.tolist()[:len(scanned)]
    os.truncate(manifest, manifest.stat().st_size // 2)

    result = finish("split", str(class_tree), "--workdir", str(workdir), "-q")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{manifest} is unreadable" in result.stderr
    assert f"cp {backup} {manifest}" in result.stderr
    assert "curate scan" in result.stderr and "Traceback" not in result.stderr

    rescanned = finish("scan", str(class_tree), "--workdir", str(workdir), "-q")
    assert rescanned.returncode == 0 and "rebuilding it from the files" in rescanned.stderr
    assert pd.read_parquet(backup).columns.tolist() == pd.read_parquet(manifest).columns.tolist()
    assert finish("split", str(class_tree), "--workdir", str(workdir), "-q").returncode == 0


@pytest.mark.parametrize("step", ["scan", "dedupe"])
def test_full_disk_is_one_line_with_the_space_needed(class_tree, tmp_path, monkeypatch, step):
    runner = CliRunner()
    workdir = tmp_path / "w"
    scanned = runner.invoke(main, ["scan", str(class_tree), "--workdir", str(workdir), "-q"])
    assert scanned.exit_code == 0
    manifest = workdir / "manifest.parquet"
    before = manifest.read_bytes()

    def no_space(self, path, *args, **kwargs):
        Path(path).write_bytes(b"x" * 3_000_000)   # the part written before the disk filled
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)
    result = runner.invoke(main, [step, str(class_tree), "--workdir", str(workdir), "-q"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no space left on {workdir}: need ~3 MB")
    assert len(result.output.strip().splitlines()) == 1
    assert manifest.read_bytes() == before
    assert not [p.name for p in workdir.iterdir() if ".tmp" in p.name]


def test_a_second_run_on_a_busy_workdir_gets_the_busy_message(class_tree, tmp_path):
    with workdir_lock(tmp_path):
        result = finish("split", str(class_tree), "--workdir", str(tmp_path), "-q")
    assert result.returncode == 1
    assert f"in use by pid {os.getpid()}" in result.stderr and "Traceback" not in result.stderr


@needs_proc
def test_a_step_while_flag_noise_runs_is_told_the_workdir_is_busy_and_sigterm_stops_it(
        photos, tmp_path):
    assert finish("scan", str(photos), "--workdir", str(tmp_path), "-q").returncode == 0
    before = (tmp_path / "manifest.parquet").read_bytes()
    process = curate("flag-noise", str(photos), "--workdir", str(tmp_path), "-q", "--backbone",
                     "mobilenet_v1_025", "--weights", "none")
    holder = f"pid {process.pid} on {os.uname().nodename}"
    deadline = time.time() + 60
    while (tmp_path / ".lock").read_text() != holder:
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.01)
    busy = CliRunner().invoke(main, ["split", str(photos), "--workdir", str(tmp_path), "-q"])
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert busy.exit_code == 1 and f"in use by pid {process.pid}" in busy.output, busy.output
    assert process.returncode == 143, err
    assert err.startswith("Error: curate flag-noise stopped by SIGTERM")
    assert len(err.splitlines()) == 1
    assert (tmp_path / "manifest.parquet").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_lock_held_only_by_orphans_of_a_dead_pid_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = subprocess.Popen(   # an orphan still holding the flock its dead parent wrote
        [sys.executable, "-c", "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); "
         "fcntl.flock(h, fcntl.LOCK_EX); h.write(sys.argv[2]); h.flush(); print(1, flush=True); "
         "time.sleep(60)", str(tmp_path / ".lock"), f"pid {dead.pid} on {os.uname().nodename}"],
        stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        assert not lifecycle.holder_alive(f"pid {dead.pid} on {os.uname().nodename}")
        with workdir_lock(tmp_path):
            assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
        assert "no longer running; taken over" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_live_holder_on_this_host_keeps_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; h = open(sys.argv[1], 'a+'); "
         "fcntl.flock(h, fcntl.LOCK_EX); h.write(f'pid {os.getpid()} on {os.uname().nodename}'); "
         "h.flush(); print(1, flush=True); time.sleep(60)", str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        with pytest.raises(WorkdirBusy, match=f"in use by pid {holder.pid}"):
            with workdir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


@needs_proc
def test_the_decode_pool_workers_die_with_a_sigkilled_parent():
    """map_files is the pool of scan, dedupe and train/evaluate's decode cache."""
    code = ("import time; from curation.parallel import map_files; "
            "map_files(time.sleep, [30] * 8, workers=2, quiet=True)")
    process = subprocess.Popen([sys.executable, "-c", code],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stderr=subprocess.PIPE, text=True)
    workers = signal_when_pooled(process, signal.SIGKILL)
    process.wait(timeout=10)
    assert wait_gone(workers) == []


def test_a_decode_cache_array_without_its_index_is_not_trusted(tmp_path, make_image):
    """A train run killed between renaming the new pixel array and its index must not pair the
    new array with the old index (same length, other images): the cache is rebuilt instead."""
    import numpy as np

    from curation.manifest import atomic_write
    from training.data import cache_paths, load_pixels

    root = tmp_path / "data"
    paths = [make_image(root / f"{i}.jpg", seed=i) for i in range(3)]
    stats = [p.stat() for p in paths]
    rows = pd.DataFrame({"path": [p.name for p in paths], "bytes": [s.st_size for s in stats],
                         "mtime": [s.st_mtime for s in stats], "label": "x"})
    pixels, located, _ = load_pixels(rows, root, 32, tmp_path / "cache", workers=1, quiet=True)
    first = np.array(pixels[located["slot"]])
    array_path, _ = cache_paths(tmp_path / "cache", 32)
    atomic_write(array_path, lambda tmp: np.save(tmp, np.zeros_like(first)))
    pixels, located, _ = load_pixels(rows, root, 32, tmp_path / "cache", workers=1, quiet=True)
    assert np.array_equal(np.array(pixels[located["slot"]]), first)
