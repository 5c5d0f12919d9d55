"""Faulty state is visible and nothing is lost silently (issue 14 §5), on a real `shipyard serve`:
its SQLite file deleted or replaced by a folder, or its PostgreSQL stopped, while it serves.
Predictions still answer; readiness says `degraded` and why (`?strict=1`: 503); one log line per
change of state; rows that cannot wait are counted in `shipyard_prediction_log_dropped_total`;
and when the database is back, what waited is written."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harness.bundles import make_bundle
from harness.pg import Postgres
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.engine import dispose_engines

from ..serving import Server, serve, server_env
from ..waiting import wait_for

pytestmark = pytest.mark.slow
# the log buffers 20,000 instances or 32 MiB of arrays (about 10,500 of these): three fill it
BIG = 5_000
ARGS = ("tiny", "--no-evaluate", "--poll-s", "0.5", "--max-batch-size", "1", "--max-body-mb", "16")


def _body(n: int) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 784], "data": [0] * (n * 784)}]},
                      separators=(",", ":")).encode()


SMALL, LARGE = _body(1), _body(BIG)


def _infer(srv: Server, body: bytes, rid: str | None = None) -> None:
    headers = {"content-type": "application/json", **({"x-request-id": rid} if rid else {})}
    r = httpx.post(f"{srv.base}/v2/models/tiny/infer", content=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text


def _dropped(srv: Server, reason: str) -> float:
    text = httpx.get(f"{srv.base}/metrics", timeout=10).text
    m = re.search(rf'^shipyard_prediction_log_dropped_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _database(srv: Server) -> dict:  # type: ignore[type-arg]
    return srv.health()["database"]  # type: ignore[no-any-return]


def _fill_until_dropped(srv: Server, reason: str) -> tuple[int, float]:
    """Send large requests (each still answered) until the log's buffer overflows: (instances
    sent, the count of dropped rows)."""
    sent = 0
    while sent < 4 * BIG and not _dropped(srv, reason):
        _infer(srv, LARGE)
        sent += BIG
    # the writer counts what it cannot put back after its attempt: soon, not necessarily yet
    return sent, wait_for(lambda: _dropped(srv, reason), f"rows counted as dropped ({reason})")


def _logged(conn: Any) -> int:
    return int(conn.execute(sa.text("SELECT COALESCE(SUM(n), 0) FROM prediction_chunks")).scalar())


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, Registry]]:
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "b1"), "tiny", alias="production")
    yield home, reg
    dispose_engines()


def test_a_sqlite_file_deleted_or_replaced_under_a_running_server(home: tuple[Path, Registry]) -> None:
    home_dir, _ = home
    db = home_dir / "shipyard.db"
    kept = home_dir / "kept.db"
    with serve(home_dir, *ARGS) as srv:
        _infer(srv, SMALL)
        assert srv.health()["degraded"] is False and _database(srv)["state"] == "ok"

        os.link(db, kept)  # the same file under a second name, so it can be put back
        db.unlink()
        state = wait_for(lambda: _database(srv)["state"] == "deleted" and _database(srv), "readiness to say deleted")
        assert "was deleted" in state["error"] and srv.health()["degraded"] is True
        assert httpx.get(f"{srv.base}/v2/health/ready").status_code == 200  # still serving: still ready …
        assert httpx.get(f"{srv.base}/v2/health/ready?strict=1").status_code == 503  # … unless asked to be strict
        sent, first = _fill_until_dropped(srv, "deleted")  # every request still answered 200
        _infer(srv, LARGE)
        sent += BIG + 1
        wait_for(lambda: _dropped(srv, "deleted") > first, "the count to grow as predictions keep coming")
        assert _database(srv)["pending"] > 0
        # readiness and the metric count the same drops; read one after the other, they agree once
        # the writer's current attempt has counted its own
        wait_for(lambda: _database(srv)["dropped"]["deleted"] == _dropped(srv, "deleted"),
                 "readiness and the metric to count the same dropped rows")

        os.link(kept, db)  # back: what waited in memory is written into it
        wait_for(lambda: _database(srv)["ok"], "readiness to recover")
        wait_for(lambda: _database(srv)["pending"] == 0, "the held rows to be written")
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:  # every instance answered is logged or counted as dropped
            assert _logged(conn) + _dropped(srv, "deleted") + _dropped(srv, "backlog") == sent
        engine.dispose()

        kept.unlink()
        db.rename(kept)  # replaced by a folder: nothing can be written there
        db.mkdir()
        _infer(srv, SMALL)
        state = wait_for(lambda: _database(srv)["state"] == "replaced" and _database(srv), "readiness to say replaced")
        assert "not a file" in state["error"]
        db.rmdir()
        kept.rename(db)
        wait_for(lambda: _database(srv)["ok"], "readiness to recover again")
        _infer(srv, SMALL)
    log = srv.log.read_text()
    # one line per change of state, not one per attempt (4 a second while it lasted)
    assert log.count("cannot write (deleted)") == 1 and log.count("cannot write (replaced)") == 1, log
    assert log.count("prediction log: writing again") == 2, log


def test_postgresql_stopped_and_started_under_a_running_server(tmp_path: Path) -> None:
    pg = Postgres()
    try:
        url = pg.url()
        home_dir = tmp_path / "home"
        reg = Registry(settings=Settings(home=home_dir, database_url=url))
        reg.register(make_bundle(tmp_path / "b1"), "tiny", alias="production")
        env = server_env(home_dir, SHIPYARD_DATABASE_URL=url)
        with serve(home_dir, *ARGS, env=env) as srv:
            _infer(srv, SMALL)
            pg.stop()
            _infer(srv, SMALL)  # answered, though it cannot be logged now
            state = wait_for(lambda: _database(srv)["state"] == "write_error" and _database(srv),
                             "readiness to say the database cannot be written")
            assert state["error"] and srv.health()["degraded"] is True
            sent, first = _fill_until_dropped(srv, "write_error")
            _infer(srv, LARGE)
            sent += BIG + 2
            wait_for(lambda: _dropped(srv, "write_error") > first, "the count to grow as predictions keep coming")

            pg.start()
            wait_for(lambda: _database(srv)["ok"] and _database(srv)["pending"] == 0,
                     "readiness to recover and the held rows to be written")
            with reg.engine.connect() as conn:  # every instance answered is logged or counted as dropped
                assert _logged(conn) + _dropped(srv, "write_error") + _dropped(srv, "backlog") == sent
        log = srv.log.read_text()
        assert log.count("cannot write (write_error)") == 1 and log.count("prediction log: writing again") == 1, log
    finally:
        dispose_engines()
        pg.close()
