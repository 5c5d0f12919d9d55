"""The prediction log when its database goes away under it (issue 14 §5): a deleted, replaced or
failing SQLite database is a state the log reports and counts, never rows written into the void;
when the database is back, what waited is written. Real SQLite, real tiny bundles."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from shipyard.monitor.config import LogConfig
from shipyard.monitor.predlog import PredictionLog, read
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.store.engine import DatabaseUnavailable, file_problem, sqlite_path
from shipyard.store.schema import prediction_chunks

RNG = np.random.default_rng(7)


def _lost(reason: str) -> float:
    return REGISTRY.get_sample_value("shipyard_prediction_log_dropped_total", {"reason": reason}) or 0.0


def _record(log: PredictionLog, rt: ModelRuntime, prefix: str, n: int) -> None:
    x = RNG.random((n, 784)).astype(np.float32)
    log.record_batch(rt, [f"{prefix}-{i}" for i in range(n)], [1] * n, x, rt.predict(x))


@pytest.fixture
def setup(registry: Registry) -> tuple[Registry, ModelRuntime, Path]:
    rt = ModelRuntime(registry.load("tiny@production"), version=1, name="tiny")
    path = sqlite_path(registry.engine)
    assert path is not None
    return registry, rt, Path(path)


def test_a_deleted_database_file_keeps_rows_waiting_counts_the_overflow_and_writes_them_when_back(
        setup: tuple[Registry, ModelRuntime, Path]) -> None:
    reg, rt, db = setup
    log = PredictionLog(reg.engine, LogConfig(max_pending=20))
    _record(log, rt, "before", 5)
    assert log.flush() == 5 and log.health()["ok"]
    os.link(db, db.with_name("kept.db"))  # the same file under another name, to put it back later
    db.unlink()

    _record(log, rt, "during", 20)
    with pytest.raises(DatabaseUnavailable, match="was deleted") as e:
        log.flush()  # nothing written into the unlinked file: it would be lost
    assert e.value.http_status == 503
    health = log.health()
    assert (health["ok"], health["state"], health["pending"]) == (False, "deleted", 20)
    lost_before = _lost("deleted")
    _record(log, rt, "overflow", 25)  # the buffer is full (max_pending): dropped, and counted under why
    assert _lost("deleted") - lost_before == 25 and log.health()["dropped"] == {"deleted": 25}

    os.link(db.with_name("kept.db"), db)  # the file is back
    assert log.flush() == 20 and log.health()["ok"] and log.health()["pending"] == 0
    ids = read(reg.engine, "tiny").request_ids
    assert "during-19" in ids and "before-0" in ids and not any(i.startswith("overflow") for i in ids)


def test_a_database_file_replaced_by_a_folder_is_reported_not_written_past(
        setup: tuple[Registry, ModelRuntime, Path]) -> None:
    reg, rt, db = setup
    log = PredictionLog(reg.engine, LogConfig())
    assert log.flush() == 0 and file_problem(reg.engine) is None
    db.rename(db.with_name("moved.db"))
    db.mkdir()
    _record(log, rt, "r", 3)
    with pytest.raises(DatabaseUnavailable, match="not a file"):
        log.flush()
    assert log.health()["state"] == "replaced" and log.health()["pending"] == 3


def test_a_restored_copy_at_the_path_is_adopted(setup: tuple[Registry, ModelRuntime, Path]) -> None:
    reg, rt, db = setup
    log = PredictionLog(reg.engine, LogConfig())
    _record(log, rt, "old", 2)
    log.flush()
    copy = db.with_name("copy.db")
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    os.replace(copy, db)  # a restored backup: another file at the same path
    _record(log, rt, "new", 3)
    assert log.flush() == 3 and log.health()["ok"]
    with sqlite3.connect(db) as conn:  # the rows are in the file now at the path
        ids = b"\n".join(r[0] for r in conn.execute("SELECT request_ids FROM prediction_chunks"))
    assert b"new-2" in ids and b"old-0" in ids


def test_writes_that_fail_are_a_state_until_one_succeeds(setup: tuple[Registry, ModelRuntime, Path]) -> None:
    reg, rt, _ = setup
    log = PredictionLog(reg.engine, LogConfig(max_pending=6))
    prediction_chunks.drop(reg.engine)  # every insert now really fails
    _record(log, rt, "a", 6)
    with pytest.raises(DatabaseUnavailable, match="no such table"):
        log.flush()
    assert log.health()["state"] == "write_error" and log.health()["pending"] == 6
    before = _lost("write_error")
    _record(log, rt, "b", 6)  # the buffer is full: these are dropped
    assert _lost("write_error") - before == 6
    prediction_chunks.create(reg.engine)
    assert log.flush() == 6 and log.health()["ok"]
    assert log.health()["dropped"] == {"write_error": 6}
