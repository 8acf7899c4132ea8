"""Dask as the per-file engine: same manifest either way, partitions not files, a killed worker's
work re-run, no worker left behind after Ctrl-C, a remote scheduler reached by its address."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from click.testing import CliRunner

from cli import main
from curation import cluster
from curation.config import ConfigError, DatasetConfig, load_config
from curation.embed import compute
from curation.embed.cache import cache_file, read_cache
from curation.embed.compute import EmbedSettings, embed_files
from curation.manifest import read_manifest
from curation.parallel import map_files
from curation.settings import SettingError
from curation.scan.step import scan
from tests.conftest import REPO, synthetic_photo


@pytest.fixture(scope="module")
def scheduler():
    """A 2-worker x 1-thread LocalCluster on 127.0.0.1: stands for a remote scheduler."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as local:
        yield local.scheduler_address


def test_work_is_cut_into_partitions_of_hundreds_of_files_not_one_task_per_file():
    assert cluster.partition_size(200_000, 16) == cluster.PARTITION == 1024
    assert cluster.partition_size(200_000, 16, cluster.EMBED_PARTITION) == 256
    assert cluster.partition_size(1000, 2) == 125
    assert cluster.partition_size(10, 2) == cluster.MIN_PARTITION
    parts = cluster.partitions(list(range(600)), 256)
    assert [len(p) for p in parts] == [256, 256, 88] and sum(parts, []) == list(range(600))


def test_cluster_setting_is_checked_once_from_the_option_or_datasets_yaml(tmp_path):
    config = DatasetConfig(name="d", root=tmp_path, cluster="local")
    with pytest.raises(SettingError, match=r"scan: option --cluster \(setting 'cluster'\) must "
                                           r"be none, local or tcp://HOST:PORT, got 'udp://x'"):
        scan(config, tmp_path / "w", cluster="udp://x")
    yaml = tmp_path / "datasets.yaml"
    yaml.write_text("datasets:\n  cars: {root: /x, cluster: 'tcp://127.0.0.1:8786'}\n"
                    "  vans: {root: /y}\n")
    configs = load_config(yaml)
    assert configs["cars"].cluster == "tcp://127.0.0.1:8786" and configs["vans"].cluster is None
    yaml.write_text("datasets:\n  cars: {root: /x, cluster: 'somewhere'}\n")
    with pytest.raises(ConfigError, match="dataset 'cars': key 'cluster' must be none, local"):
        load_config(yaml)


def _manifest(workdir: Path) -> pd.DataFrame:
    return read_manifest(workdir).sort_values("path").reset_index(drop=True)


def _cache(workdir: Path, tta: bool) -> tuple[pd.DataFrame, np.ndarray]:
    keys, vectors = read_cache(cache_file(workdir, "mobilenet_v2", 224, "imagenet", tta))
    order = np.argsort(keys["path"].to_numpy())
    return keys.iloc[order].reset_index(drop=True), vectors[order]


def test_scan_dedupe_and_embed_on_a_remote_scheduler_equal_the_in_process_engines(
        curate_data, curate_weights, scheduler, tmp_path):
    """The docs/scale.md recipe: the same commands with --cluster tcp://HOST:PORT. Dedupe embeds
    (mirror views) through the embed step's cache, embed --no-tta fills another cache file."""
    root = curate_data / "swift-wagonr"
    runner = CliRunner()
    steps = (["scan"], ["dedupe"], ["embed", "--no-tta"])
    summaries = {}
    for name, extra in (("pool", ["--workers", "2"]), ("dask", ["--cluster", scheduler])):
        for step in steps:
            result = runner.invoke(main, [*step, str(root), "--workdir", str(tmp_path / name),
                                         "-q", "--json", *extra])
            assert result.exit_code == 0, result.output
        summaries[name] = json.loads(result.stdout)
    pool, dask = _manifest(tmp_path / "pool"), _manifest(tmp_path / "dask")
    assert list(pool.columns) == list(dask.columns) and "phash" in pool and "dup_group" in pool
    pd.testing.assert_frame_equal(pool, dask, check_exact=True)
    assert pool["dup_group"].notna().any()   # the comparison covers real duplicate groups
    assert summaries["dask"]["engine"] == "onnx" and summaries["dask"]["computed"] > 200
    for tta in (True, False):                # bit for bit: ONNX Runtime's per-image results do
        (pool_keys, pool_vectors), (dask_keys, dask_vectors) = (   # not depend on the batch
            _cache(tmp_path / name, tta) for name in ("pool", "dask"))
        pd.testing.assert_frame_equal(pool_keys, dask_keys, check_exact=True)
        assert len(pool_keys) > 200
        np.testing.assert_array_equal(pool_vectors, dask_vectors)


def test_embedding_on_dask_is_checkpointed_as_partitions_finish(curate_data, curate_weights,
                                                                scheduler, tmp_path,
                                                                monkeypatch):
    files = sorted(str(p.relative_to(curate_data))
                   for p in (curate_data / "swift-wagonr" / "train").rglob("*.jpg"))[:96]
    settings = EmbedSettings(backbone="mobilenet_v2", weights="imagenet", image_size=224,
                             tta=False)
    here = embed_files(files, tmp_path / "here", root=curate_data, settings=settings, quiet=True)
    parts = []
    real = compute.write_checkpoint
    monkeypatch.setattr(compute, "write_checkpoint",
                        lambda *a: parts.append(len(a[1])) or real(*a))
    with cluster.engine(scheduler):
        there = embed_files(files, tmp_path / "there", root=curate_data, settings=settings,
                            quiet=True, checkpoint_every=32)
    assert len(parts) >= 2 and all(n >= 32 for n in parts)   # partitions of 16: two per part
    assert there.computed == here.computed == len(files)
    np.testing.assert_array_equal(here.vectors, there.vectors)


def test_a_kept_context_reuses_one_cluster_for_every_step_and_closes_it_at_the_end(scheduler):
    with cluster.kept():
        with cluster.engine(scheduler) as first:
            assert cluster.active() is first
        assert cluster.active() is None and first.status == "running"
        with cluster.engine(scheduler) as second:
            assert second is first
    assert first.status == "closed"


def _worker_environment() -> tuple:
    import dask

    return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"),
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"))


def test_local_workers_keep_glibc_adaptive_malloc_and_run_few_periodic_checks():
    """Dask's MALLOC_TRIM_THRESHOLD_ made every large buffer an mmap/munmap pair (scan's work
    took 1.5-2x the pool's CPU), its 20 ms ticks took the GIL from the task thread; one
    BLAS/OpenMP thread per worker stays."""
    with cluster.engine(cluster.LOCAL, workers=1) as client:
        assert list(client.run(_worker_environment).values()) == [(None, "1", False, "1s")]


def _kill_own_worker_once(args: tuple[int, str]) -> int:
    """Square a number; on item 37 the first time, SIGKILL this very worker process."""
    value, marker = args
    if value == 37 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.002)
    return value * value


def test_a_killed_workers_partitions_are_rerun_and_the_map_still_finishes(scheduler, tmp_path):
    marker = str(tmp_path / "killed")
    items = [(v, marker) for v in range(400)]
    with cluster.engine(scheduler) as client:
        before = set(client.scheduler_info(n_workers=-1)["workers"])
        assert map_files(_kill_own_worker_once, items, quiet=True) == [v * v for v in range(400)]
        assert os.path.exists(marker)                      # a worker really died mid-run
        after = set(client.scheduler_info(n_workers=-1)["workers"])
    assert before != after   # its nanny started a new one in its place


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("group", [False, True], ids=["parent", "terminal-group"])
def test_ctrl_c_stops_a_local_cluster_run_with_no_worker_left_behind(tmp_path, group):
    root = tmp_path / "data"
    for i in range(120):
        path = root / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, (320, 240)).save(path)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "scan", str(root), "--workdir",
         str(tmp_path / "w"), "--cluster", "local", "--workers", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(workers := _descendants(process.pid)) < 2:   # the cluster's worker processes
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no Dask workers started"
        time.sleep(0.05)
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned workers: {alive}"
    assert not (tmp_path / "w" / "manifest.parquet").exists()
    shutil.rmtree(root)


def test_a_scheduler_that_does_not_answer_is_one_line_naming_it(class_tree, tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:   # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    result = CliRunner().invoke(main, ["scan", str(class_tree), "--workdir", str(tmp_path / "w"),
                                       "--cluster", address])
    assert result.exit_code == 2
    assert f"--cluster {address}: no Dask scheduler answered" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_each_step_writes_the_manifest_once_whatever_the_engine(class_tree, scheduler, tmp_path,
                                                               monkeypatch):
    from curation import steps
    from curation.dedupe.step import dedupe

    writes = []
    real = steps.write_manifest
    monkeypatch.setattr(steps, "write_manifest", lambda *a, **k: (writes.append(1), real(*a, **k)))
    config = DatasetConfig(name="tree", root=class_tree, cluster=scheduler)   # from datasets.yaml
    scan(config, tmp_path / "w", quiet=True)
    assert len(writes) == 1
    dedupe(config, tmp_path / "w", quiet=True)
    assert len(writes) == 2
