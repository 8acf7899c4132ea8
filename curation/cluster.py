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
import os
import sys
from typing import Callable, Iterator, Sequence, TypeVar

from curation.config import parse_cluster
from curation.errors import CurateError
from curation.lifecycle import checked
from curation.settings import setting

T = TypeVar("T")
R = TypeVar("R")

# Files per Dask task, at most: a task costs Dask ~2 ms of wall time on two busy cores, so cheap
# per-file work (scan's checks, hashing: 0.3-0.7 ms a file) goes in partitions of up to 1,024
# (hashing 50,000 files: 1.07x the pool's time, 1.20x at 256, 1.35x at 64; measured, same run),
# while embedding (~20 ms a file) keeps EMBED_PARTITION, so a lost worker costs little.
PARTITION = 1024
EMBED_PARTITION = 256
MIN_PARTITION = 16       # files per Dask task, at least (small runs)
LOCAL = "local"
CONNECT_TIMEOUT = "20s"  # how long a tcp:// scheduler may take to answer
# LocalCluster workers as lean as the in-process pool's (measured on 10,000 generated JPEGs):
# - Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap
#   threshold: every buffer over 128 KiB (scan's 1 MiB reads, decoded images) is mmapped and
#   unmapped anew; scan's per-file work took 1.5-2x the pool's CPU. A nanny also writes the
#   variable into its own process's environment, so it is also left out while ours spawn.
# - Its periodic checks (event-loop tick every 20 ms, memory every 100 ms, system every 500 ms,
#   a 10 ms sampling profiler for the dashboard, which is off) take the GIL from the task
#   thread: at 1-5 s, hashing went from 1.21x to 1.13x the pool's time, scan from 1.26x to 1.10x.
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                       "distributed.worker.profile.enabled": False,
                       "distributed.admin.tick.interval": "1s",
                       "distributed.admin.system-monitor.interval": "5s",
                       "distributed.worker.memory.monitor-interval": "1s",
                       "distributed.nanny.memory.monitor-interval": "1s"}
_active: contextvars.ContextVar = contextvars.ContextVar("curate_dask_client", default=None)
_kept: contextvars.ContextVar = contextvars.ContextVar("curate_dask_kept", default=None)


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


def partition_size(items: int, workers: int, most: int = PARTITION) -> int:
    """Files per task: about four tasks per worker (so a lost or slow worker costs little),
    between MIN_PARTITION and `most` files each."""
    return max(MIN_PARTITION, min(most, math.ceil(items / max(1, 4 * workers))))


def partitions(items: Sequence[T], size: int) -> list[list[T]]:
    """items cut into consecutive lists of `size` (the last may be shorter)."""
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def workers_of(client) -> int:
    """How many workers the client's scheduler has now (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def split(client, items: Sequence[T], most: int = PARTITION) -> list[list[T]]:
    """items cut into partitions sized for the client's workers (partition_size)."""
    return partitions(items, partition_size(len(items), workers_of(client), most))


def run_partition(func: Callable[[T], R], items: list[T]) -> list[R]:
    """One Dask task: func over a partition. Dask's nanny already starts each worker with one
    BLAS/OpenMP thread (its pre-spawn-environ), as the in-process pool's initializer does."""
    return [func(item) for item in items]


def as_done(client, func: Callable[[list[T]], R], parts: Sequence[list[T]]
            ) -> Iterator[tuple[int, R]]:
    """func over each partition on a Dask client: (partition number, result) as each finishes.
    Partitions not yet run are cancelled when the consumer stops early or raises."""
    from distributed import as_completed

    futures = client.map(func, parts, pure=False)
    number = {future.key: index for index, future in enumerate(futures)}
    try:
        for future in checked(as_completed(futures)):
            yield number[future.key], future.result()
    finally:
        client.cancel([future for future in futures if not future.done()])


@contextlib.contextmanager
def engine(address: str | None, *, workers: int | None = None) -> Iterator[object]:
    """Send map_files' work to Dask while inside (see the module docstring); None: no change."""
    if address is None or active() is not None:
        yield active()
        return
    with _connected(address, workers) as client:
        token = _active.set(client)
        try:
            yield client
        finally:
            _active.reset(token)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Inside: a cluster an `engine` connects to stays up until the end, for every later engine
    asking for the same address and workers (`curate run`: one LocalCluster for the pipeline,
    not one per step)."""
    with contextlib.ExitStack() as stack:
        token = _kept.set((stack, {}))
        try:
            yield
        finally:
            _kept.reset(token)


def _connected(address: str, workers: int | None) -> contextlib.AbstractContextManager:
    """A client for address: the one a `kept` context already holds, else a new one."""
    if _kept.get() is None:
        return _client(address, workers)
    stack, clients = _kept.get()
    key = (address, workers if address == LOCAL else None)
    if key not in clients:
        clients[key] = stack.enter_context(_client(address, workers))
    return contextlib.nullcontext(clients[key])


@contextlib.contextmanager
def _client(address: str, workers: int | None) -> Iterator[object]:
    import dask
    from distributed import Client, LocalCluster

    if address == LOCAL:   # n_workers None: one per core
        with dask.config.set(LOCAL_WORKER_CONFIG):
            with _main_not_reimported(), _environment_without("MALLOC_TRIM_THRESHOLD_"):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       silence_logs=logging.ERROR)
            with cluster, Client(cluster) as client:
                yield client
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"--cluster {address}: no Dask scheduler answered ({exc}); "
                                 f"start one with `dask scheduler` or use --cluster local") from None
    with client:
        yield client


@contextlib.contextmanager
def _environment_without(name: str) -> Iterator[None]:
    """While inside, the variable is not in this process's environment (spawned children lack it)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """While LocalCluster spawns its workers: multiprocessing's spawn re-runs the parent's
    __main__ in each child (cli.py: all of curate, 4-5 s of imports per worker, measured) unless
    __main__ has neither a file nor a module spec. A worker imports only the functions it is
    sent; a worker its nanny restarts later does re-run __main__, which costs time, not results."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
