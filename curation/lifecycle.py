"""What keeps a killed or interrupted run from leaving the workdir stuck.

Worker processes die with the process that started them (Linux PR_SET_PDEATHSIG), ignore the
terminal's Ctrl-C (the parent handles it and stops them), and are killed when the parent stops
early. The workdir lock names its holder, a lock whose holder is gone is taken over, and
Ctrl-C and SIGTERM become exceptions so the CLI can print one line and exit 130 or 143.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import multiprocessing.context
import os
import platform
import signal
import sys
import threading
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from concurrent.futures import process as futures_process
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar

from curation.errors import CurateError

_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so `except Exception` in a
    per-file loop cannot swallow it and the same cleanup runs."""


class WorkerDied(CurateError):
    """A worker process was killed (most often by the out-of-memory killer)."""


class LockHeld(Exception):
    """The lock file is held by a live process; str() is who holds it."""


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; elsewhere a no-op).

    If the parent is already gone (it died between fork and here), exit at once.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class _Worker(multiprocessing.context.ForkProcess):
    """A pool worker that never runs the parent's Ctrl-C/SIGTERM handler and dies with it.

    It is forked with both signals blocked and ignores them before unblocking: a Ctrl-C sent to
    the whole process group while it starts cannot raise in it (a traceback, a pool wrongly
    reported broken). The parent handles both and kills it.
    """

    def __init__(self, *args, started: list[_Worker], **kwargs):
        super().__init__(*args, **kwargs)
        self._parent, self._started = os.getpid(), started

    def start(self) -> None:
        with _interrupts_deferred():   # on record before a signal now can raise
            super().start()
            self._started.append(self)
        raise_if_signalled()

    def run(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)   # also drops one that is pending
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        die_with_parent(self._parent)
        super().run()


class _WorkerContext(multiprocessing.context.ForkContext):
    """The fork context, keeping every worker it starts on record. The pool's own list misses a
    worker when the interrupt lands between its start and the pool noting it; that worker then
    waits for work forever and Python's exit waits for it (the hang this prevents)."""

    def __init__(self):
        self.started: list[_Worker] = []

    def Process(self, *args, **kwargs) -> _Worker:  # noqa: N802 (multiprocessing's name)
        return _Worker(*args, started=self.started, **kwargs)


@contextlib.contextmanager
def process_pool(workers: int, *, initializer: Callable[[], None] | None = None
                 ) -> Iterator[ProcessPoolExecutor]:
    """A ProcessPoolExecutor whose workers die with this process and are killed, with the queued
    work dropped, when the block ends by an exception (Ctrl-C, SIGTERM, an error)."""
    context = _WorkerContext()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer)
    try:
        yield pool
    except BrokenProcessPool:
        _stop(pool, context.started)
        raise WorkerDied("a worker process was killed (out of memory?): re-run with fewer "
                         "--workers; finished work is kept") from None
    except BaseException:
        _stop(pool, context.started)
        raise
    pool.shutdown(wait=True)


def _stop(pool: ProcessPoolExecutor, workers: list[_Worker]) -> None:
    """Kill every worker and drop the queued work, with signals only noted meanwhile (a second
    Ctrl-C must not leave a worker alive).

    A worker killed while sending a large result (decoded pixels) leaves the pool's reader
    thread waiting for the rest of it, and Python's exit waits for that thread. The workers'
    ends of the result pipe close as they die; closing this process's end too turns the wait
    into end-of-file, which the pool handles.
    """
    with _interrupts_deferred():
        _hush_cancelled_future_race()
        results = getattr(pool, "_result_queue", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                process.kill()
        with contextlib.suppress(OSError, AttributeError):
            results._writer.close()


def _hush_cancelled_future_race() -> None:
    """Python 3.11's pool thread, marking the futures of a pool whose workers were killed as
    failed, dies with InvalidStateError on one the caller had cancelled (CPython gh-107219,
    fixed in 3.12): keep that known, harmless traceback off the user's screen."""
    if getattr(threading.excepthook, "func", None) is not _quiet_about_cancelled_futures:
        threading.excepthook = functools.partial(_quiet_about_cancelled_futures,
                                                 threading.excepthook)


def _quiet_about_cancelled_futures(fallback, args) -> None:
    if not (args.exc_type is InvalidStateError
            and isinstance(args.thread, futures_process._ExecutorManagerThread)):
        fallback(args)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_signalled: list[int] = []   # received, not yet handled: kept in case the raise was swallowed
_deferring = [0]   # > 0 while a block that must not be cut short runs: signals are only noted


def _raise_interrupt(signum, frame=None):
    """Signal handler: note the signal, raise KeyboardInterrupt (Ctrl-C) or Terminated (SIGTERM)."""
    _signalled.append(signum)
    raise_if_signalled()


def raise_if_signalled() -> None:
    """Raise again for a signal whose first raise was swallowed (Python ignores exceptions from
    at-fork hooks and __del__), so a run never carries on, or writes, after Ctrl-C or SIGTERM."""
    if _signalled and not _deferring[0]:
        raise Terminated() if _signalled[-1] == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Inside, Ctrl-C and SIGTERM are only noted (raise_if_signalled raises them after) and are
    blocked in this thread, so a process forked inside starts with them blocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def checked(items: Iterable[T]) -> Iterator[T]:
    """items, with raise_if_signalled() before each one."""
    for item in items:
        raise_if_signalled()
        yield item


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While inside, Ctrl-C and SIGTERM raise in the main thread (handlers restored after)."""
    try:
        previous = {signum: signal.signal(signum, _raise_interrupt)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:   # not the main thread: leave signals alone
        yield
        return
    unraisable = sys.unraisablehook
    sys.unraisablehook = functools.partial(_quiet_about_interrupts, unraisable)
    try:
        yield
        raise_if_signalled()
    finally:
        sys.unraisablehook = unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signalled.clear()


def _quiet_about_interrupts(fallback, unraisable) -> None:
    """An interrupt swallowed in an at-fork hook is raised again later: no traceback for it."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        fallback(unraisable)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports it: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def holder_alive(holder: str) -> bool:
    """Whether the 'pid N on HOST' written in a lock file names a process still running.

    A holder on another host, or an unparsable one, counts as alive: it cannot be checked.
    """
    words = holder.split()
    if len(words) != 4 or words[0] != "pid" or not words[1].isdigit():
        return True
    if words[3] != platform.node():
        return True
    try:
        os.kill(int(words[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(path: Path) -> IO:
    """flock path for this process and write 'pid N on HOST' in it; return the open handle.

    Raises LockHeld when a live process holds it. A lock whose named pid is dead (its orphaned
    children still hold it) is taken over: the file is replaced and a note printed.
    """
    path = Path(path)
    for _ in range(5):
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if not holder or holder_alive(holder):
                raise LockHeld(holder or "another process") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            print(f"note: {path} was held by {holder}, which is no longer running; taken over",
                  file=sys.stderr)
            continue
        if _same_file(handle, path):
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}")
            handle.flush()
            return handle
        handle.close()   # another run replaced the file between our open and flock: try again
    raise LockHeld("another process (the lock file keeps changing)")


def _same_file(handle: IO, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise


def release_lock(handle: IO) -> None:
    """Empty the holder line and unlock (closing the handle)."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
