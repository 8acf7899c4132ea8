"""Run fastdup and cleanvision on a list of image files and print what they found, as JSON.

Called by bench/dedupe_bench.py with the interpreter of an environment that has the `bench`
extra (fastdup 2.54 pins numpy<2 and an older Pillow, so it lives in its own virtualenv; see
docs/dedupe.md). Needs only the two tools: it never imports curation. Reads the file list
(one path a line) and writes {"fastdup": {...}, "cleanvision": {...}} to a JSON file:
fastdup's similarity pairs (indices into the list, cosine similarity) from one run at its lowest
swept threshold, so the caller can sweep threshold/ccthreshold on them, plus the groups of fastdup's own
connected components at its default ccthreshold; cleanvision's exact and near duplicate sets.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def run_fastdup(paths: list[str], threshold: float, neighbours: int, threads: int) -> dict:
    """One fastdup run (its bundled ONNX model, offline) over paths."""
    try:
        import fastdup
    except ImportError as exc:
        return {"available": False, "reason": f"fastdup not installed ({exc})"}
    index = {str(Path(p).resolve()): k for k, p in enumerate(paths)}
    with tempfile.TemporaryDirectory(prefix="fastdup_") as work:
        started = time.perf_counter()
        fd = fastdup.create(work_dir=work, input_dir=[str(Path(p).resolve()) for p in paths])
        fd.run(threshold=threshold,
               nearest_neighbors_k=neighbours, num_threads=threads, overwrite=True,
               run_sentry=False, verbose=False)
        similarity = fd.similarity(data=False)
        components = fd.connected_components(data=False)
        seconds = time.perf_counter() - started
        mapping = fd.annotations(valid_only=False)[["fd_index", "filename"]]
    name_of = dict(zip(mapping["fd_index"], mapping["filename"]))
    pairs = [[index[str(Path(name_of[a]).resolve())], index[str(Path(name_of[b]).resolve())],
              round(float(d), 5)] for a, b, d in
             zip(similarity["from"], similarity["to"], similarity["distance"])]
    own = components[0] if isinstance(components, tuple) else components
    groups = [[index[str(Path(name_of[i]).resolve())] for i in members["index"]]
              for _, members in own.groupby("component_id") if len(members) > 1]
    return {"available": True, "version": fastdup.__version__, "seconds": round(seconds, 2),
            "images_per_second": round(len(paths) / seconds, 1), "threshold": threshold,
            "nearest_neighbors_k": neighbours, "pairs": pairs, "default_ccthreshold_groups": groups}


def run_cleanvision(paths: list[str]) -> dict:
    """cleanvision's exact and near duplicate checks at their defaults."""
    try:
        import cleanvision
        from cleanvision import Imagelab
    except ImportError as exc:
        return {"available": False, "reason": f"cleanvision not installed ({exc})"}
    index = {str(p): k for k, p in enumerate(paths)}
    started = time.perf_counter()
    lab = Imagelab(filepaths=[str(p) for p in paths])
    lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False)
    seconds = time.perf_counter() - started
    sets = [[index[str(p)] for p in members] for key in ("exact_duplicates", "near_duplicates")
            for members in lab.info[key]["sets"]]
    return {"available": True, "version": cleanvision.__version__, "seconds": round(seconds, 2),
            "images_per_second": round(len(paths) / seconds, 1), "sets": sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file_list", help="text file, one image path a line")
    parser.add_argument("out", help="where the JSON goes (the tools print to stdout)")
    parser.add_argument("--threshold", type=float, default=0.8,
                        help="fastdup's lowest similarity kept (the sweep starts here)")
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    args = parser.parse_args()
    paths = Path(args.file_list).read_text().splitlines()
    out = {"fastdup": run_fastdup(paths, args.threshold, args.neighbours, args.threads),
           "cleanvision": run_cleanvision(paths)}
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
