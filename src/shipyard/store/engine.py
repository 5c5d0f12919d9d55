"""The project's one database: an engine per URL, brought to the newest Alembic migration on
first use. SQLite (the default) runs in WAL mode with immediate write transactions, so several
processes can track runs at once without losing a write."""

from __future__ import annotations

import fcntl
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
            engine = sa.create_engine(url, pool_pre_ping=True)
        except (ImportError, sa.exc.NoSuchModuleError) as e:
            raise ConfigError("database_url", url, f"no driver for it ({e})") from None
    _created.append(engine)
    try:
        _migrate(engine)
    except sa.exc.OperationalError as e:
        raise ShipyardError(f"cannot reach the database {parsed.render_as_string()}: "
                            f"{e.orig}") from None
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
