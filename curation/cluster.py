"""Dask as the engine for per-file work: a LocalCluster, an existing scheduler, or neither.

`engine(address, workers=...)` is a context: inside it, `curation.parallel.map_files` ships its
work to the `active()` client in `partitions` of a few hundred files (never one task per
file). `local` starts a LocalCluster on 127.0.0.1 (one single-threaded worker process per core,
no dashboard) and stops it when the context ends, Ctrl-C included; `tcp://HOST:PORT` uses
a running scheduler whose workers see the same paths and have this package installed. A worker
lost mid-run has its partitions re-run elsewhere by Dask (up to `distributed.scheduler.
allowed-failures` times), so the step still finishes with the same result.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Callable, Iterator, Sequence, TypeVar

from curation.config import parse_cluster
from curation.errors import CurateError
from curation.settings import setting

T = TypeVar("T")
R = TypeVar("R")

PARTITION = 256          # files per Dask task, at most
MIN_PARTITION = 16       # files per Dask task, at least (small runs)
LOCAL = "local"
CONNECT_TIMEOUT = "20s"  # how long a tcp:// scheduler may take to answer
_active: contextvars.ContextVar = contextvars.ContextVar("curate_dask_client", default=None)


class ClusterUnreachable(CurateError):
    """The scheduler named by --cluster could not be reached."""

    exit_code = 2


def cluster_setting():
    """The `cluster` setting of a step whose per-file work can run on Dask (scan, dedupe)."""
    return setting(None, "Where per-file work runs: local (a Dask cluster on this machine), "
                   "tcp://HOST:PORT (a running Dask scheduler) or none (this process's pool) "
                   "[default: datasets.yaml's cluster, else none].", kind=str,
                   check=parse_cluster, config="cluster", result=False)


def engine_for(settings):
    """The engine a step's settings ask for: their `cluster` (and `workers`) fields, if any."""
    return engine(getattr(settings, "cluster", None), workers=getattr(settings, "workers", None))


def active():
    """The Dask client per-file work goes to now, or None (the in-process pool)."""
    return _active.get()


def partition_size(items: int, workers: int) -> int:
    """Files per task: about four tasks per worker (so a lost or slow worker costs little),
    between MIN_PARTITION and PARTITION files each."""
    return max(MIN_PARTITION, min(PARTITION, math.ceil(items / max(1, 4 * workers))))


def partitions(items: Sequence[T], size: int) -> list[list[T]]:
    """items cut into consecutive lists of `size` (the last may be shorter)."""
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def run_partition(func: Callable[[T], R], items: list[T]) -> list[R]:
    """One Dask task: func over a partition. Dask's nanny already starts each worker with one
    BLAS/OpenMP thread (its pre-spawn-environ), as the in-process pool's initializer does."""
    return [func(item) for item in items]


@contextlib.contextmanager
def engine(address: str | None, *, workers: int | None = None) -> Iterator[object]:
    """Send map_files' work to Dask while inside (see the module docstring); None: no change."""
    if address is None or active() is not None:
        yield active()
        return
    with _client(address, workers) as client:
        token = _active.set(client)
        try:
            yield client
        finally:
            _active.reset(token)


@contextlib.contextmanager
def _client(address: str, workers: int | None) -> Iterator[object]:
    from distributed import Client, LocalCluster

    if address == LOCAL:   # n_workers None: one per core
        with LocalCluster(n_workers=workers, threads_per_worker=1,
                          processes=True, host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"--cluster {address}: no Dask scheduler answered ({exc}); "
                                 f"start one with `dask scheduler` or use --cluster local") from None
    with client:
        yield client
