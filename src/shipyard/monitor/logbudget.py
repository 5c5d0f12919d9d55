"""The prediction log's retention and size budget: what the writer removes every minute, so the
log cannot fill the disk however much traffic comes.

First the limits that always held: age (`retention_days`), rows per model (`max_rows`) and the
input ring's size. Then, while the rows hold more bytes than `max_bytes`, it removes down to 90%
of the budget, cheapest loss first:

1. `unlabelled` — sampled inputs past the feedback horizon are cut to the rows that got a label
   (a later label is refused as late, so the rest can never join one: they are no retraining
   data); the chunks kept are marked `labelled`.
2. `inputs` — the oldest sampled and ring inputs still waiting for labels; the writer also halves
   its sample share (down to 1/1024 of `--log-sample`), so the sample that is kept spreads over
   a longer time, and doubles it back while the log uses under 70% of its budget.
3. `past_horizon` — the oldest predictions (ids and outputs) past the feedback horizon, with
   the inputs (labelled ones too) that only they joined.
4. `in_horizon` — only if that is not enough: the oldest predictions labels could still reach
   (logged as a warning: the budget cannot hold the horizon at this traffic).

Bytes are the rows' blob lengths plus a fixed overhead per row, the same query on SQLite and
PostgreSQL (their files keep freed pages for reuse, so a file's size does not fall after a
delete; it stops growing). What was removed is counted by table and reason
(`shipyard_prediction_log_removed_total`); `usage` is the same picture for `monitor status`."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.monitor import metrics
from shipyard.monitor.config import LogConfig
from shipyard.store.engine import sqlite_path
from shipyard.store.schema import feedback, prediction_chunks, prediction_inputs

log = logging.getLogger("shipyard.monitor")

DISK_SHARE = 0.10  # the default budget: this share of the free disk (plus what the database holds) …
MIN_BYTES = 64 << 20  # … at least this …
MAX_BYTES = 20 << 30  # … at most this; also the default on PostgreSQL, whose disk is not ours to see
TARGET = 0.9  # a trim goes down to this share of the budget, so it does not run every minute
RAISE_BELOW = 0.7  # under this share of the budget the sample share climbs back
ROW_OVERHEAD = 64  # bytes per row besides its blobs: the other columns, the row header, the indexes
COMPACT_LIMIT = 5000  # sampled-input chunks cut to their labelled rows per minute
WARN_EVERY_S = 3600.0
_DELETE_IDS = 500  # ids per DELETE … IN (…)

P, C = prediction_chunks, prediction_inputs
TABLES = ("prediction_chunks", "prediction_inputs")


def _len(col: Any) -> Any:
    return sa.func.coalesce(sa.func.length(col), 0)


def _row_bytes(table: sa.Table) -> Any:
    """A row's bytes: its blobs' lengths (SQLite and PostgreSQL alike) plus the fixed overhead."""
    blobs = [c for c in table.c if isinstance(c.type, sa.LargeBinary)]
    expr: Any = sa.literal(ROW_OVERHEAD)
    for col in blobs:
        expr = expr + _len(col)
    return expr


def default_max_bytes(engine: sa.Engine) -> int:
    """10% of what the SQLite file's filesystem could give the database (its free space plus the
    file itself, so a restart after the log has grown derives the same budget), between 64 MiB
    and 20 GiB; on PostgreSQL (its disk is the server's, not visible here) 20 GiB."""
    path = sqlite_path(engine)
    if path is None:
        return MAX_BYTES
    try:
        folder = Path(path).parent
        size = os.stat(path).st_size if os.path.exists(path) else 0
        free = shutil.disk_usage(folder).free
    except OSError:
        return MAX_BYTES
    return int(min(MAX_BYTES, max(MIN_BYTES, DISK_SHARE * (free + size))))


def measure(conn: sa.Connection) -> dict[str, int]:
    """Bytes per table, as the budget counts them."""
    return {t.name: int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_row_bytes(t)), 0))).scalar_one())
            for t in (P, C)}


def disk_bytes(conn: sa.Connection) -> int:
    """What the disk holds: the SQLite file's pages, or the two PostgreSQL tables in full."""
    if conn.dialect.name == "sqlite":
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        return int(pages * conn.exec_driver_sql("PRAGMA page_size").scalar_one())
    if conn.dialect.name == "postgresql":
        return int(sum(conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one() or 0
                       for t in TABLES))
    return 0


class Budget:
    """One per prediction log (writer thread only): the budget, the sample share in force, and
    the minute's retention."""

    def __init__(self, engine: sa.Engine, config: LogConfig) -> None:
        self.engine = engine
        self.config = config
        self.max_bytes = config.max_bytes or default_max_bytes(engine)
        self.share = config.sample
        self.floor = config.sample / 1024
        self.used: dict[str, int] = {}
        self._warned = 0.0
        metrics.LOG_BUDGET.set(self.max_bytes)
        metrics.LOG_SAMPLE_SHARE.set(self.share)

    def retain(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """Age, row cap and ring, then the budget; returns the rows removed by (table, reason)."""
        now = time.time() if now is None else now
        removed: dict[tuple[str, str], int] = {}
        with self.engine.begin() as conn:
            _limits(conn, self.config, now, removed)
        with self.engine.begin() as conn:
            self.used = measure(conn)
            over = sum(self.used.values()) - self.max_bytes
            if over > 0:
                self._trim(conn, sum(self.used.values()) - int(self.max_bytes * TARGET), now, removed)
                self.used = measure(conn)
            disk = disk_bytes(conn)
        total = sum(self.used.values())
        if removed.get(("prediction_inputs", "inputs")):
            self.share = max(self.share / 2, self.floor)
        elif total < RAISE_BELOW * self.max_bytes and self.share < self.config.sample:
            self.share = min(self.share * 2, self.config.sample)
        for table, n in self.used.items():
            metrics.LOG_BYTES.labels(table).set(n)
        metrics.LOG_DISK_BYTES.set(disk)
        metrics.LOG_SAMPLE_SHARE.set(self.share)
        for (table, reason), n in removed.items():
            if n:
                metrics.LOG_REMOVED.labels(table, reason).inc(n)
        if removed.get(("prediction_chunks", "in_horizon")) and now - self._warned > WARN_EVERY_S:
            self._warned = now
            log.warning("prediction log: its budget (%s) cannot hold the feedback horizon (%.0f h) at this traffic: "
                        "the oldest predictions labels could still reach are removed (labels for them will be "
                        "'unknown'); raise --log-max-bytes or shorten --feedback-horizon-h",
                        human(self.max_bytes), self.config.horizon_s / 3600)
        return removed

    def _trim(self, conn: sa.Connection, excess: int, now: float, removed: dict[tuple[str, str], int]) -> None:
        horizon = now - self.config.horizon_s if self.config.horizon_s > 0 else None
        if horizon is not None:
            excess -= _compact(conn, horizon, removed)
        if excess > 0:  # the oldest inputs still waiting for a label
            q = sa.select(C.c.id, C.c.n, _row_bytes(C)).where(C.c.kind.in_(("sample", "ring")))
            picked = _oldest(conn, q.order_by(C.c.ts_last, C.c.id), excess)
            _delete(conn, C, [r[0] for r in picked])
            _add(removed, "prediction_inputs", "inputs", sum(r[1] for r in picked))
            excess -= sum(r[2] for r in picked)
        if excess > 0:  # the oldest predictions, with the inputs only they joined
            q = sa.select(P.c.id, P.c.n, _row_bytes(P), P.c.model, P.c.ts_last)
            picked = _oldest(conn, q.order_by(P.c.ts_last, P.c.id), excess, _dragged(conn))
            _delete(conn, P, [r[0] for r in picked])
            cutoff: dict[str, float] = {}
            for _, n, _, model, ts_last in picked:
                reason = "past_horizon" if horizon is None or ts_last < horizon else "in_horizon"
                _add(removed, "prediction_chunks", reason, n)
                cutoff[model] = max(cutoff.get(model, ts_last), ts_last)
            for model, ts in cutoff.items():
                where = (C.c.model == model, C.c.ts_last <= ts)
                n = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(C.c.n), 0)).where(*where)).scalar_one()
                conn.execute(C.delete().where(*where))
                _add(removed, "prediction_inputs", "with_predictions", int(n))


def _limits(conn: sa.Connection, cfg: LogConfig, now: float, removed: dict[tuple[str, str], int]) -> None:
    """The limits that always held: chunks past the age limit, the oldest beyond the per-model
    row cap (and the sampled inputs of the predictions dropped), ring chunks beyond the ring's size."""
    old = now - cfg.retention_days * 86400
    for table in (P, C):
        n = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(table.c.n), 0)).where(table.c.ts_last < old))
        _add(removed, table.name, "age", int(n.scalar_one()))
        conn.execute(table.delete().where(table.c.ts_last < old))
    for (model,) in conn.execute(sa.select(P.c.model).distinct()).all():
        for table, limit, extra in ((P, cfg.max_rows, None), (C, cfg.ring, C.c.kind == "ring")):
            q = sa.select(table.c.id, table.c.n, table.c.ts_last).where(table.c.model == model)
            if extra is not None:
                q = q.where(extra)
            kept, cutoff, doomed = 0, None, []
            for cid, n, ts_last in conn.execute(q.order_by(table.c.ts_last.desc(), table.c.id.desc())):
                if kept >= limit:
                    cutoff = (cid, ts_last) if cutoff is None else cutoff
                    doomed.append(cid)
                    _add(removed, table.name, "rows" if table is P else "ring", n)
                kept += n
            _delete(conn, table, doomed)
            if table is P and cutoff is not None:
                where = (C.c.model == model, C.c.kind != "ring", C.c.ts_last <= cutoff[1])
                n = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(C.c.n), 0)).where(*where)).scalar_one()
                conn.execute(C.delete().where(*where))
                _add(removed, "prediction_inputs", "rows", int(n))


def _compact(conn: sa.Connection, before: float, removed: dict[tuple[str, str], int]) -> int:
    """Cut sampled-input chunks that ended before `before` (the feedback horizon) to the rows
    whose prediction got a label, oldest first, at most COMPACT_LIMIT chunks; returns the bytes freed."""
    rows = conn.execute(sa.select(C.c.id, C.c.model, C.c.ids, C.c.data, C.c.n, C.c.ts_first, C.c.ts_last)
                        .where(C.c.kind == "sample", C.c.ts_last < before)
                        .order_by(C.c.ts_last, C.c.id).limit(COMPACT_LIMIT)).all()
    freed = 0
    by_model: dict[str, list[Any]] = {}
    for r in rows:
        by_model.setdefault(r.model, []).append(r)
    for model, chunks in by_model.items():
        lo, hi = min(r.ts_first for r in chunks), max(r.ts_last for r in chunks)
        labelled = _labelled_ids(conn, model, lo, hi)
        gone = []
        for r in chunks:
            ids = np.frombuffer(r.ids, "<i8")
            keep = np.isin(ids, labelled)
            _add(removed, "prediction_inputs", "unlabelled", int(r.n - keep.sum()))
            if not keep.any():
                gone.append(r.id)
                freed += len(r.ids) + len(r.data) + ROW_OVERHEAD
                continue
            data = np.frombuffer(r.data, np.uint8).reshape(r.n, -1)[keep]
            freed += (len(ids) - int(keep.sum())) * (8 + data.shape[1])
            conn.execute(C.update().where(C.c.id == r.id).values(
                kind="labelled", n=int(keep.sum()), ids=ids[keep].tobytes(), data=data.tobytes()))
        _delete(conn, C, gone)
    return freed


def _labelled_ids(conn: sa.Connection, model: str, lo: float, hi: float) -> np.ndarray:
    """The prediction ids of `model` logged between `lo` and `hi` whose request id has a label."""
    labels = {rid for (rid,) in conn.execute(sa.select(feedback.c.request_id).where(feedback.c.model == model,
                                                                                      feedback.c.ts >= lo))}
    out: list[np.ndarray] = []
    if not labels:
        return np.zeros(0, np.int64)
    q = sa.select(P.c.ids, P.c.request_ids).where(P.c.model == model, P.c.ts_last >= lo, P.c.ts_first <= hi)
    for ids, rids in conn.execute(q):
        hit = [i for i, rid in enumerate(rids.decode().split("\n")) if rid in labels]
        if hit:
            out.append(np.frombuffer(ids, "<i8")[hit])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _oldest(conn: sa.Connection, q: sa.Select[Any], excess: int,
            dragged: dict[str, list[tuple[float, int]]] | None = None) -> list[tuple[Any, ...]]:
    """Rows of `q` (id, rows, bytes[, model, ts_last]; oldest first) until their bytes cover
    `excess`; with `dragged` (model → [(ts_last, bytes)] of inputs, oldest first) a prediction
    chunk also frees the inputs that end no later than it does (they go with it)."""
    picked: list[tuple[Any, ...]] = []
    freed = 0
    at: dict[str, int] = {}
    result = conn.execute(q.execution_options(yield_per=1000))  # streamed: stop reading once covered
    try:
        for row in result:
            if freed >= excess:
                break
            picked.append(tuple(row))
            freed += int(row[2])
            if dragged is not None:
                inputs, k = dragged.get(row[3], []), at.get(row[3], 0)
                while k < len(inputs) and inputs[k][0] <= row[4]:
                    freed += inputs[k][1]
                    k += 1
                at[row[3]] = k
    finally:
        result.close()
    return picked


def _dragged(conn: sa.Connection) -> dict[str, list[tuple[float, int]]]:
    """The inputs left once waiting ones are gone (labelled ones, and any the trim spared), per
    model, oldest first: what removing the predictions they join frees besides."""
    out: dict[str, list[tuple[float, int]]] = {}
    for model, ts_last, size in conn.execute(sa.select(C.c.model, C.c.ts_last, _row_bytes(C))
                                             .order_by(C.c.ts_last, C.c.id)):
        out.setdefault(model, []).append((float(ts_last), int(size)))
    return out


def _delete(conn: sa.Connection, table: sa.Table, ids: list[Any]) -> None:
    for i in range(0, len(ids), _DELETE_IDS):
        conn.execute(table.delete().where(table.c.id.in_(ids[i:i + _DELETE_IDS])))


def _add(removed: dict[tuple[str, str], int], table: str, reason: str, n: int) -> None:
    if n:
        removed[(table, reason)] = removed.get((table, reason), 0) + n


def human(n: float) -> str:
    """Bytes as 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def usage(engine: sa.Engine, *, max_bytes: int = 0, horizon_s: float = 0.0,
          metrics_dirs: Iterable[Path] = ()) -> dict[str, Any]:
    """What the log holds against its budget, for `monitor status`: bytes, rows and the oldest
    time per table (and inputs per kind), how far back predictions reach against the feedback
    horizon, and the rows removed so far as the running servers counted them (read from their
    Prometheus folders, `metrics_dirs`; the counts live in the servers, not in the database).
    `max_bytes` 0: the default a server starting now would derive."""
    budget = max_bytes or default_max_bytes(engine)
    tables: dict[str, Any] = {}
    with engine.connect() as conn:
        used = measure(conn)
        disk = disk_bytes(conn)
        for t in (P, C):
            rows, oldest = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.n), 0),
                                                  sa.func.min(t.c.ts_first))).one()
            tables[t.name] = {"bytes": used[t.name], "rows": int(rows),
                              "oldest": float(oldest) if oldest is not None else None}
        tables["prediction_inputs"]["by_kind"] = {
            kind: int(n) for kind, n in conn.execute(sa.select(C.c.kind, sa.func.sum(C.c.n)).group_by(C.c.kind))}
    total = sum(used.values())
    oldest = tables["prediction_chunks"]["oldest"]
    return {"budget_bytes": budget, "used_bytes": total, "used_share": round(total / budget, 4), "disk_bytes": disk,
            "tables": tables, "horizon_s": horizon_s,
            "reach_s": round(time.time() - oldest, 1) if oldest is not None else None,
            "removed": removed_counts(metrics_dirs)}


def removed_counts(dirs: Iterable[Path]) -> dict[str, int]:
    """`shipyard_prediction_log_removed_total` summed over the Prometheus multiprocess folders of
    running servers (a server's folder is `HOME/run/metrics-PID`), as "table/reason" → rows."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[str, int] = {}
    for folder in dirs:
        if not Path(folder).is_dir():
            continue
        for family in MultiProcessCollector(CollectorRegistry(), path=str(folder)).collect():
            if family.name != "shipyard_prediction_log_removed":
                continue
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = f"{s.labels['table']}/{s.labels['reason']}"
                    out[key] = out.get(key, 0) + int(s.value)
    return out
