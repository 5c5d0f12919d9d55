"""Leases: one holder at a time for a job that must not run twice (the evaluator of a
deployment, a rollout), across worker processes, replicas and CLIs that share the database.
A holder renews before its lease expires; if it dies, anyone may take the lease once it has
expired. Plain rows and conditional UPDATEs, so SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from shipyard.store.schema import leases


def new_holder(role: str = "") -> str:
    """A holder id unique to this process and call: host, pid and a random suffix."""
    return f"{role + '@' if role else ''}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: float
    expires_at: float


def acquire(engine: sa.Engine, name: str, holder: str, ttl_s: float, *, now: float | None = None) -> bool:
    """Take or renew `name` for `ttl_s` seconds. True when `holder` holds it afterwards."""
    now = time.time() if now is None else now
    t = leases
    with engine.begin() as conn:
        res = conn.execute(
            t.update()
            .where(t.c.name == name, sa.or_(t.c.holder == holder, t.c.expires_at < now))
            .values(holder=holder, expires_at=now + ttl_s,
                    acquired_at=sa.case((t.c.holder == holder, t.c.acquired_at), else_=now)))
        if res.rowcount == 1:
            return True
        if conn.execute(sa.select(t.c.name).where(t.c.name == name)).first() is not None:
            return False  # held by someone else, not expired
    try:
        with engine.begin() as conn:
            conn.execute(t.insert().values(name=name, holder=holder, acquired_at=now, expires_at=now + ttl_s))
        return True
    except sa.exc.IntegrityError:  # another process inserted it first
        return False


def release(engine: sa.Engine, name: str, holder: str) -> None:
    """Give the lease up now (a clean shutdown), so another process need not wait for expiry."""
    with engine.begin() as conn:
        conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))


def current(engine: sa.Engine, name: str, *, now: float | None = None) -> Lease | None:
    """Who holds `name` now (None when nobody does or the lease has expired)."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
    if row is None or row.expires_at < now:
        return None
    return Lease(row.name, row.holder, row.acquired_at, row.expires_at)
