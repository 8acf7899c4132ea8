"""Run a per-file function over many files in worker processes, with a progress bar (rate, ETA).

Inside `curation.cluster.engine(...)` (a step with a `cluster` setting) the work goes to Dask
instead of the in-process pool; results are the same either way.
"""
from __future__ import annotations

import os
import sys
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


def progress_bar(*, total: int | None = None, desc: str = "", unit: str = "file",
                 quiet: bool = False, items: Iterable | None = None) -> tqdm:
    """A progress bar on stderr showing items/s and ETA; call .update(n) for work done in batches."""
    return tqdm(items, total=total, desc=desc, unit=unit, disable=quiet or None,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "file", quiet: bool = False) -> Iterator[T]:
    """Wrap an iterable in a progress bar on stderr showing files/s and ETA."""
    return iter(progress_bar(items=items, total=total, desc=desc, unit=unit, quiet=quiet))


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
    from distributed import as_completed

    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    parts = cluster.partitions(items, cluster.partition_size(len(items), workers))
    futures = client.map(cluster.run_partition, [func] * len(parts), parts, pure=False)
    sizes = {future.key: len(part) for future, part in zip(futures, parts)}
    try:
        with progress_bar(total=len(items), desc=desc, quiet=quiet) as bar:
            for future in checked(as_completed(futures)):
                bar.update(sizes[future.key])
        results = client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
    return [result for part in results for result in part]
