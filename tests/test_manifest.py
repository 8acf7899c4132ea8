"""Manifest I/O: atomic writes, column merging, the per-image cache and the workdir lock."""
from __future__ import annotations

import multiprocessing
import os

import pandas as pd
import pytest

from curation.manifest import (ManifestMissing, _umask, WorkdirBusy, atomic_write, merge_columns,
                               read_manifest, unchanged_rows, workdir_lock, write_manifest)


def rows(*paths, size=10, mtime=1.0):
    return pd.DataFrame({"path": list(paths), "bytes": size, "mtime": mtime})


def test_merge_replaces_and_adds_columns():
    manifest = rows("a", "b").assign(dup_group=[1, 1])
    merged = merge_columns(manifest, pd.DataFrame({"path": ["b"], "dup_group": [7], "extra": ["x"]}))
    assert list(merged.columns) == ["path", "bytes", "mtime", "dup_group", "extra"]
    assert pd.isna(merged.loc[0, "dup_group"]) and merged.loc[1, "dup_group"] == 7


def test_unchanged_rows_are_keyed_by_path_size_and_mtime():
    old = rows("a", "b", "c").assign(phash=["1", "2", "3"])
    current = pd.concat([rows("a"), rows("b", size=11), rows("c", mtime=2.0), rows("d")])
    cached = unchanged_rows(old, current, ["phash"])
    assert cached["path"].tolist() == ["a"] and cached["phash"].tolist() == ["1"]
    assert unchanged_rows(None, current, ["phash"]).empty
    assert unchanged_rows(old.drop(columns="phash"), current, ["phash"]).empty


def test_write_is_atomic_and_sorted(tmp_path):
    write_manifest(rows("b", "a"), tmp_path)
    assert read_manifest(tmp_path)["path"].tolist() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]
    assert (tmp_path / "manifest.parquet").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_temp_file_keeps_the_suffix_so_numpy_writes_it_as_given(tmp_path):
    import numpy as np
    target = atomic_write(tmp_path / "means.npy", lambda tmp: np.save(tmp, np.arange(3)))
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["means.npy"]


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def explode(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_missing_manifest_and_columns_say_what_to_run(tmp_path):
    with pytest.raises(ManifestMissing, match="curate scan"):
        read_manifest(tmp_path)
    write_manifest(rows("a"), tmp_path)
    with pytest.raises(ManifestMissing, match=r"lacks columns \['dup_group'\]"):
        read_manifest(tmp_path, required=["dup_group"])


def _try_lock(workdir, queue):
    try:
        with workdir_lock(workdir):
            queue.put("got it")
    except WorkdirBusy as exc:
        queue.put(str(exc))


def test_lock_excludes_another_process(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    with workdir_lock(tmp_path):
        child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(tmp_path, queue))
        child.start()
        child.join(10)
        message = queue.get(timeout=5)
    assert "in use by pid" in message and str(os.getpid()) in message
    with workdir_lock(tmp_path):
        pass
