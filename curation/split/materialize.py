"""`--materialize DIR`: the split laid out as DIR/{train,val,test}/<class>/ for folder-reading tools.

Files are hard links (no extra space), else absolute symlinks, else copies; the source tree is only
read. DIR is rebuilt beside itself and swapped in, and curate only replaces a DIR it made itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from curation.config import ConfigError
from curation.parallel import progress

LINK_MODES = ("auto", "hardlink", "symlink", "copy")
MARKER = ".curate-materialized.json"
_LINKERS = {"hardlink": os.link, "symlink": os.symlink, "copy": shutil.copy2}


def check_target(out_dir: Path, root: Path) -> Path:
    """The resolved output folder; refuses one inside, equal to or around the dataset root."""
    out, root = Path(out_dir).expanduser().resolve(), Path(root).resolve()
    if out == root or root in out.parents:
        raise ConfigError(f"--materialize {out} is inside the dataset root {root}; curate never "
                          f"writes there: choose a folder outside it")
    if out in root.parents:
        raise ConfigError(f"--materialize {out} contains the dataset root {root}; choose a folder "
                          f"beside it instead")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ConfigError(f"--materialize {out} exists and was not made by curate; choose a new "
                          f"or empty folder")
    return out


def plan_layout(paths, labels, splits) -> list[tuple[str, str]]:
    """(source path, destination path) pairs: <split>/<label>/<file name>.

    A file keeps its name unless two files of one folder share it; those take their whole source
    path with '/' turned into '__' (e.g. train/swift/a.jpg -> train__swift__a.jpg).
    """
    frame = pd.DataFrame({"path": list(paths), "label": [str(x).replace("/", "_") for x in labels],
                          "split": list(splits)})
    frame["name"] = [PurePosixPath(p).name for p in frame["path"]]
    clash = frame.duplicated(["split", "label", "name"], keep=False)
    frame.loc[clash, "name"] = frame.loc[clash, "path"].str.replace("/", "__")
    dest = frame["split"] + "/" + frame["label"] + "/" + frame["name"]
    if dest.duplicated().any():
        raise ConfigError(f"--materialize: two files map to {dest[dest.duplicated()].iloc[0]}")
    return list(zip(frame["path"], dest))


def materialize(rows: pd.DataFrame, root: Path, out_dir: Path, *, link: str = "auto",
                quiet: bool = False) -> dict:
    """Lay out rows (path, split_label, split) under out_dir and return what was made."""
    if link not in LINK_MODES:
        raise ConfigError(f"link mode must be one of {', '.join(LINK_MODES)}, got {link!r}")
    out, root = check_target(out_dir, root), Path(root).resolve()
    plan = plan_layout(rows["path"], rows["split_label"], rows["split"])
    _check_owned(out)
    building = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    used: Counter = Counter()
    try:
        for source, dest in progress(plan, total=len(plan), desc="materialize", quiet=quiet):
            target = building / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            used[_link(root / source, target, link)] += 1
        (building / MARKER).write_text(json.dumps({"made_by": "curate split", "root": str(root),
                                                   "files": [d for _, d in plan]}) + "\n")
        _swap_in(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return {"folder": str(out), "files": len(plan), "links": dict(sorted(used.items()))}


def _link(source: Path, target: Path, mode: str) -> str:
    """Make target from source by mode (auto tries hardlink, symlink, copy); returns the one used."""
    *fallible, last = ("hardlink", "symlink", "copy") if mode == "auto" else (mode,)
    for name in fallible:
        with contextlib.suppress(OSError):
            _LINKERS[name](source, target)
            return name
    try:
        _LINKERS[last](source, target)
    except OSError as exc:
        raise ConfigError(f"--materialize: cannot {last} {source} to {target}: "
                          f"{exc.strerror or exc}") from None
    return last


def _check_owned(out: Path) -> None:
    """Refuse to replace a folder holding files that the previous materialize did not list."""
    if not (out / MARKER).is_file():
        return
    listed = set(json.loads((out / MARKER).read_text())["files"])
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()} - {MARKER}
    strangers = sorted(found - listed)
    if strangers:
        raise ConfigError(f"--materialize {out} holds files curate did not make (e.g. "
                          f"{strangers[0]}); move them or choose another folder")


def _swap_in(building: Path, out: Path) -> None:
    """Replace out by the freshly built folder; the old tree (only our links and copies) is removed."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, retired)
        os.replace(building, out)
        shutil.rmtree(retired)
    else:
        os.replace(building, out)


def describe(summary: dict) -> str:
    """One line: where the folder tree is and how its files were made."""
    how = ", ".join(f"{n} {mode}s" for mode, n in summary["links"].items()) or "no files"
    return f"Materialized {summary['files']} files under {summary['folder']} ({how})."
