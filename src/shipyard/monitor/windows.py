"""What the evaluator persisted, read back: each version's state for the CLI, the server and the
dashboard, and the evaluated windows (the evaluator writes them; every reader comes here)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shipyard.store.schema import monitor_state, monitor_windows


def status(engine: sa.Engine, name: str) -> dict[int, dict[str, Any]]:
    """The persisted state of every evaluated version of `name` (newest evaluation)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(monitor_state.c.version, monitor_state.c.state)
                            .where(monitor_state.c.model == name).order_by(monitor_state.c.version)).all()
    return {int(v): dict(s) for v, s in rows}


def windows(engine: sa.Engine, name: str, *, since: float | None = None, version: int | None = None,
            limit: int = 10_000) -> list[dict[str, Any]]:
    """Evaluated windows of `name`, oldest first."""
    w = monitor_windows
    q = sa.select(w).where(w.c.model == name)
    if since is not None:
        q = q.where(w.c.ts_last >= since)
    if version is not None:
        q = q.where(w.c.version == version)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(w.c.ts_last.desc(), w.c.id.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in reversed(rows)]


def window_at(engine: sa.Engine, name: str, version: int, ts: float) -> dict[str, Any] | None:
    """The first evaluated window of `name@version` that spans `ts` (None when none does)."""
    w = monitor_windows
    with engine.connect() as conn:
        row = conn.execute(sa.select(w).where(w.c.model == name, w.c.version == version, w.c.ts_first <= ts,
                                              w.c.ts_last >= ts).order_by(w.c.id).limit(1)).mappings().first()
    return dict(row) if row is not None else None
