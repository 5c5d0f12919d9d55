"""The project's one database: an engine per URL, brought to the newest Alembic migration on
first use. SQLite (the default) runs in WAL mode with immediate write transactions, so several
processes can track runs at once without losing a write.

A SQLite file deleted or replaced under a running process is not an error to SQLite: its open
connections go on writing into the unlinked file, and all of that is lost. `file_problem` tells
(one `stat`, comparing the path with the file this process opened), so long-running writers (the
prediction log) and readiness can say so instead of losing data silently."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from shipyard.errors import ConfigError, ShipyardError
from shipyard.store.schema import HEAD

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).with_name("migrations")
#: seconds to wait for a PostgreSQL connection (a server that drops packets would block a writer for minutes)
CONNECT_TIMEOUT_S = 10
log = logging.getLogger("shipyard.store")


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """An engine for `url`, migrated to HEAD. Cached: one pool per URL per process."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError("database_url", url, "not a SQLAlchemy database URL") from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, parsed.database)
    else:
        try:
            args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_driver_name() in ("psycopg", "psycopg2") \
                and "connect_timeout" not in parsed.query else {}
            engine = sa.create_engine(url, pool_pre_ping=True, connect_args=args)
        except (ImportError, sa.exc.NoSuchModuleError) as e:
            raise ConfigError("database_url", url, f"no driver for it ({e})") from None
    _created.append(engine)
    try:
        _migrate(engine)
    except sa.exc.OperationalError as e:
        raise ShipyardError(f"cannot reach the database {parsed.render_as_string()}: "
                            f"{e.orig}") from None
    file_problem(engine)  # remembers which file this process opened
    return engine


_created: list[Engine] = []


def dispose_engines() -> None:
    """Close every pool this process opened (tests; a process that forks)."""
    while _created:
        _created.pop().dispose()
    engine_for.cache_clear()


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a read-then-write transaction waits
        # for its turn instead of failing with "database is locked" when it upgrades.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class DatabaseUnavailable(ShipyardError):
    """Writing now would lose the data (the database file is gone or replaced, or the database
    cannot be reached): HTTP 503, so a client retries rather than believing it was stored.
    `state` names why (`FileProblem.state`, or `write_error`)."""

    http_status = 503

    def __init__(self, message: str, state: str = "write_error") -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class FileProblem:
    """Why the SQLite file this process writes is not the one at its path. `state`: `deleted`
    (nothing at the path), `replaced` (something other than a regular file there), `unwritable`
    (no write permission to the file or its folder)."""

    state: str
    message: str


@dataclass
class _Opened:
    path: str
    dev: int
    ino: int


_opened: weakref.WeakKeyDictionary[Engine, _Opened] = weakref.WeakKeyDictionary()
_opened_lock = threading.Lock()


def sqlite_path(engine: Engine) -> str | None:
    """The file of a file-backed SQLite engine, else None (PostgreSQL, in-memory)."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return os.path.abspath(db)


def file_problem(engine: Engine) -> FileProblem | None:
    """None while the SQLite file at the engine's path is the one this process opened (always
    None for other databases); else what is wrong. A different regular file at the path (a
    restored backup, a file put back) is adopted: the pool is closed so new connections open
    it, and writing goes on there. The first call remembers the file; one `stat` per call."""
    path = sqlite_path(engine)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileProblem("deleted", f"the database file {path} was deleted while this process had it open; "
                                      f"nothing more is written into the deleted file")
    except OSError as e:
        return FileProblem("replaced", f"the database file {path} cannot be checked ({e.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return FileProblem("replaced", f"the database file {path} was replaced by something that is not a "
                                       f"file; nothing is written")
    with _opened_lock:
        known = _opened.get(engine)
        if known is None or known.path != path:
            _opened[engine] = _Opened(path, st.st_dev, st.st_ino)
        elif (known.dev, known.ino) != (st.st_dev, st.st_ino):
            log.warning("the database file %s was replaced; writing to the new file from now on", path)
            engine.dispose()  # connections still open on the old file are dropped when they come back
            known.dev, known.ino = st.st_dev, st.st_ino
    if not (os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK | os.X_OK)):
        return FileProblem("unwritable", f"the database file {path} or its folder is not writable by this "
                                         f"process; nothing is written")
    return None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _migrate(engine: Engine) -> None:
    if current_revision(engine) == HEAD:  # the fast path: no Alembic import
        return
    from alembic import command
    from alembic.config import Config

    lock_path = None
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(f"{engine.url.database}.migrate.lock")
    lock = open(lock_path, "w") if lock_path else None  # noqa: SIM115
    try:
        if lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(74210001)")
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        if lock:
            lock.close()
