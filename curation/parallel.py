"""Run a per-file function over many files in worker processes, with a progress bar (rate, ETA).

Inside `curation.cluster.engine(...)` (a step with a `cluster` setting) the work goes to Dask
instead of the in-process pool; results are the same either way.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from curation import cluster
from curation.lifecycle import checked, process_pool

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """All cores but leave one free on bigger machines; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - (1 if (cores or 1) > 2 else 0))


LOG_SECONDS = float(os.environ.get("CURATE_PROGRESS_SECONDS", 10))


def progress_bar(*, total: int | None = None, desc: str = "", unit: str = "file",
                 quiet: bool = False, items: Iterable | None = None) -> tqdm | LogProgress:
    """Progress on stderr: a tqdm bar (items/s, ETA) on a terminal; when stderr is not one (CI,
    nohup, a log file) a start line, a count with rate and ETA every LOG_SECONDS, and an end
    line. Call .update(n) for work done in batches, .write(text) for a line of its own."""
    if not quiet and not sys.stderr.isatty():
        return LogProgress(items, total=total, desc=desc, unit=unit)
    return tqdm(items, total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "file", quiet: bool = False) -> Iterator[T]:
    """Wrap an iterable in progress_bar's display."""
    return iter(progress_bar(items=items, total=total, desc=desc, unit=unit, quiet=quiet))


class LogProgress:
    """Progress as plain lines, for a stderr that is not a terminal (the part of tqdm's
    interface curate uses: iteration, update, set_postfix_str, write, close)."""

    def __init__(self, items: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "file"):
        self.items, self.desc, self.unit, self.n, self.postfix = items, desc, unit, 0, ""
        self.total = total if total is not None else _length(items)
        self.started = self.last = time.monotonic()
        self.closed = self.total == 0   # nothing to do, nothing to say
        if not self.closed:
            todo = (f"{self.total} {_plural(unit)}" if self.total is not None
                    else f"counting {_plural(unit)}")
            self.write(f"started: {todo}")

    def __iter__(self):
        for item in self.items:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_SECONDS:
            self.last = time.monotonic()
            self.write(self._count())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def write(self, text: str) -> None:
        print(f"{self.desc}: {text}" if self.desc else text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write(f"done: {self._count(final=True)}")

    def _count(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        line = f"{done} {_plural(self.unit)}, {rate:.1f} {self.unit}/s, {_clock(elapsed)} elapsed"
        if not final and self.total is not None and rate > 0:
            line += f", ETA {_clock((self.total - self.n) / rate)}"
        return line + (f" ({self.postfix})" if self.postfix else "")


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _length(items) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _one_thread_each() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker. The workers already fill the cores;
    letting each one's numpy spawn more made hashing of large photos 6x slower (measured)."""
    threadpool_limits(1)


def map_files(func: Callable[[T], R], items: Sequence[T], *, workers: int | None = None,
              desc: str = "", quiet: bool = False, chunksize: int | None = None) -> list[R]:
    """func over items, in order, in a process pool when workers > 1 (func must be picklable),
    or on the Dask cluster of the enclosing `cluster.engine` (func importable by its workers)."""
    client = cluster.active()
    if client is not None and items:
        return _on_dask(client, func, items, desc=desc, quiet=quiet)
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(items) < 2 * workers:
        return list(progress(map(func, items), total=len(items), desc=desc, quiet=quiet))
    chunksize = chunksize or max(1, min(64, len(items) // (workers * 8)))
    with process_pool(workers, initializer=_one_thread_each) as pool:   # workers die with us
        results = pool.map(func, items, chunksize=chunksize)
        return list(progress(checked(results), total=len(items), desc=desc, quiet=quiet))


def _on_dask(client, func: Callable[[T], R], items: Sequence[T], *, desc: str,
             quiet: bool) -> list[R]:
    """func over items on a Dask client, in partitions (cluster.partitions), results in order."""
    parts = cluster.split(client, items)
    results: list = [None] * len(parts)
    with progress_bar(total=len(items), desc=desc, quiet=quiet) as bar:
        for number, result in cluster.as_done(client, functools.partial(cluster.run_partition,
                                                                        func), parts):
            results[number] = result
            bar.update(len(result))
    return [result for part in results for result in part]
