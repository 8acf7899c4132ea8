"""`--materialize`: the split as folders of links, never touching or writing into the source."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from curation.split import materialize as mat
from curation.config import ConfigError


@pytest.fixture
def source(tmp_path, make_image):
    """A dataset root with two same-named files in one class and the rows a split would pass."""
    root = tmp_path / "data"
    paths = ["train/swift/a.jpg", "test/swift/a.jpg", "train/wagonr/b.jpg", "test/wagonr/c.jpg"]
    for i, path in enumerate(paths):
        make_image(root / path, seed=i)
    rows = pd.DataFrame({"path": paths, "split_label": ["swift", "swift", "wagonr", "swift"],
                         "split": ["train", "train", "val", "test"]})
    return root, rows


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_plan_keeps_names_unless_they_clash():
    plan = mat.plan_layout(["x/a.jpg", "y/a.jpg", "z/b.jpg"], ["car", "car", "van"], ["train"] * 3)
    assert plan == [("x/a.jpg", "train/car/x__a.jpg"), ("y/a.jpg", "train/car/y__a.jpg"),
                    ("z/b.jpg", "train/van/b.jpg")]


def test_hard_links_by_default_and_the_source_is_untouched(source, tmp_path):
    root, rows = source
    before = snapshot(root)
    summary = mat.materialize(rows, root, tmp_path / "out", quiet=True)
    out = tmp_path / "out"
    assert summary["files"] == 4 and summary["links"] == {"hardlink": 4}
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert made == ["test/swift/c.jpg", "train/swift/test__swift__a.jpg",
                    "train/swift/train__swift__a.jpg", "val/wagonr/b.jpg"]
    assert os.path.samefile(out / "test/swift/c.jpg", root / "test/wagonr/c.jpg")
    assert snapshot(root) == before


@pytest.mark.parametrize("link", ["symlink", "copy"])
def test_other_link_modes(source, tmp_path, link):
    root, rows = source
    summary = mat.materialize(rows, root, tmp_path / "out", link=link, quiet=True)
    target = tmp_path / "out" / "val" / "wagonr" / "b.jpg"
    assert summary["links"] == {link: 4}
    assert target.is_symlink() == (link == "symlink")
    assert target.read_bytes() == (root / "train/wagonr/b.jpg").read_bytes()
    assert os.path.samefile(target, root / "train/wagonr/b.jpg") == (link == "symlink")


def test_auto_falls_back_to_symlinks_when_hard_links_fail(source, tmp_path, monkeypatch):
    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setitem(mat._LINKERS, "hardlink", cross_device)
    root, rows = source
    assert mat.materialize(rows, root, tmp_path / "out", quiet=True)["links"] == {"symlink": 4}
    with pytest.raises(ConfigError, match="cannot hardlink .*cross-device"):
        mat.materialize(rows, root, tmp_path / "out2", link="hardlink", quiet=True)


def test_refuses_inside_or_around_the_root_and_foreign_folders(source, tmp_path):
    root, rows = source
    with pytest.raises(ConfigError, match="inside the dataset root"):
        mat.materialize(rows, root, root / "split", quiet=True)
    with pytest.raises(ConfigError, match="contains the dataset root"):
        mat.materialize(rows, root, tmp_path, quiet=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not made by curate"):
        mat.materialize(rows, root, tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_rerun_replaces_its_own_tree_but_not_files_it_did_not_make(source, tmp_path):
    root, rows = source
    out = tmp_path / "out"
    mat.materialize(rows, root, out, quiet=True)
    moved = rows.assign(split=["val", "val", "val", "val"])
    mat.materialize(moved, root, out, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == [mat.MARKER, "val"]
    (out / "val" / "extra.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not make .*extra.txt"):
        mat.materialize(rows, root, out, quiet=True)
    assert (out / "val" / "extra.txt").exists() and all((root / p).exists() for p in rows["path"])
