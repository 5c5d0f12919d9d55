"""Serving statistics in the database: what each worker answered per model version, every few
seconds (requests, server errors, bad-input rejections, a latency histogram). Prometheus has the
same numbers per scrape, but alert rules, `monitor status`, the report and the dashboard need them
across every worker and replica and back in time, from the one place all of them read.

Fed once a second from `RequestMetrics.flush` (already aggregated: no per-request cost)."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.store.schema import serving_minutes, serving_stats

# upper bounds in milliseconds; the last bucket is everything slower
LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, math.inf)
REJECTED = (400, 413)  # bad input: NaN, shape, dtype, range, oversized


def _key(version: str) -> int:
    return int(version) if version.isdigit() else 0  # 0: the version was not known (e.g. a 404)


class ServingStats:
    """Per worker: `add` (the metrics flush, on the event loop) accumulates; `take` hands the
    rows of each finished interval to whoever writes them (`write`, off the event loop)."""

    def __init__(self, interval_s: float = 5.0, worker: str | None = None) -> None:
        self.interval_s = interval_s
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self._start = time.time()
        self._acc: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, counts: dict[tuple[str, str, str, int], int],
            latency: dict[tuple[str, str, str], list[float]]) -> None:
        for (model, version, _route, status), n in counts.items():
            acc = self._slot(model, _key(version))
            acc["requests"] += n
            if status >= 500:
                acc["errors"] += n
            elif status in REJECTED:
                acc["rejected"] += n
        for (model, version, _route), seconds in latency.items():
            idx = np.searchsorted(LATENCY_BUCKETS_MS, np.asarray(seconds) * 1000.0, side="left")
            acc = self._slot(model, _key(version))
            acc["latency"] += np.bincount(idx, minlength=len(LATENCY_BUCKETS_MS))

    def _slot(self, model: str, version: int) -> dict[str, Any]:
        acc = self._acc.get((model, version))
        if acc is None:
            acc = self._acc[(model, version)] = {"requests": 0, "errors": 0, "rejected": 0,
                                                 "latency": np.zeros(len(LATENCY_BUCKETS_MS), np.int64)}
        return acc

    def take(self, *, force: bool = False) -> list[dict[str, Any]]:
        """The finished interval's rows (or the current one's, with `force`: shutdown)."""
        now = time.time()
        if not force and now - self._start < self.interval_s:
            return []
        acc, self._acc = self._acc, {}
        start, self._start = self._start, now
        return [{"model": m, "version": v, "worker": self.worker, "ts_start": start, "ts_end": now,
                 "requests": a["requests"], "errors": a["errors"], "rejected": a["rejected"],
                 "latency": a["latency"].tolist()} for (m, v), a in acc.items() if a["requests"]]


def write(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """The interval's rows, and the same counts added to their minutes (`serving_minutes`), in
    one transaction."""
    if rows:
        with engine.begin() as conn:
            conn.execute(serving_stats.insert(), rows)
            _add_minutes(conn, rows)


def _add_minutes(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Upsert each row's counts into its minute: counters add up, `peak_rps` keeps the larger."""
    per: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], r["version"], int(r["ts_end"] // 60))
        m = per.setdefault(key, {"requests": 0, "errors": 0, "rejected": 0, "peak_rps": 0.0,
                                 **{f"l{i}": 0 for i in range(len(LATENCY_BUCKETS_MS))}})
        for k in ("requests", "errors", "rejected"):
            m[k] += r[k]
        for i, n in enumerate(r["latency"]):
            m[f"l{i}"] += int(n)
        m["peak_rps"] = max(m["peak_rps"], r["requests"] / max(r["ts_end"] - r["ts_start"], 1.0))
    values = [{"model": k[0], "version": k[1], "minute": k[2], **m} for k, m in per.items()]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(serving_minutes)
        greatest: Any = sa.func.greatest
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(serving_minutes)
        greatest = sa.func.max  # SQLite's max() of two arguments is the larger one
    t = serving_minutes.c
    counters = ["requests", "errors", "rejected", *[f"l{i}" for i in range(len(LATENCY_BUCKETS_MS))]]
    update = {c: t[c] + stmt.excluded[c] for c in counters}
    update["peak_rps"] = greatest(t.peak_rps, stmt.excluded.peak_rps)
    conn.execute(stmt.on_conflict_do_update(index_elements=["model", "version", "minute"], set_=update), values)


@dataclass(frozen=True)
class Summary:
    """Serving over a time range, every worker together."""

    requests: int
    errors: int
    rejected: int
    latency: np.ndarray  # counts per LATENCY_BUCKETS_MS bucket

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def rejection_rate(self) -> float | None:
        return self.rejected / self.requests if self.requests else None

    def quantile_ms(self, q: float) -> float | None:
        """Like Prometheus' histogram_quantile: linear within the bucket that holds it."""
        total = int(self.latency.sum())
        if total == 0:
            return None
        rank = q * total
        cum = np.cumsum(self.latency)
        i = int(np.searchsorted(cum, rank, side="left"))
        hi = LATENCY_BUCKETS_MS[i]
        lo = 0.0 if i == 0 else LATENCY_BUCKETS_MS[i - 1]
        if math.isinf(hi):
            return lo
        below = 0 if i == 0 else int(cum[i - 1])
        return lo + (hi - lo) * (rank - below) / max(int(self.latency[i]), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "rejected": self.rejected,
                "error_rate": self.error_rate, "rejection_rate": self.rejection_rate,
                "p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99)}


def summary(engine: sa.Engine, model: str, *, since: float, until: float | None = None,
            version: int | None = None) -> Summary:
    if until is None and version is None and time.time() - since > 3600 and _rolled_up(engine, model, since):
        t = serving_minutes.c  # a long range: sums over the minutes, in the database
        cols = [t.requests, t.errors, t.rejected, *[t[f"l{i}"] for i in range(len(LATENCY_BUCKETS_MS))]]
        with engine.connect() as conn:
            row = conn.execute(sa.select(*[sa.func.coalesce(sa.func.sum(c), 0) for c in cols]).where(
                t.model == model, t.minute >= int(since // 60))).one()
        return Summary(int(row[0]), int(row[1]), int(row[2]), np.asarray(row[3:], np.int64))
    s = serving_stats
    q = sa.select(s.c.requests, s.c.errors, s.c.rejected, s.c.latency).where(s.c.model == model,
                                                                              s.c.ts_end >= since)
    if until is not None:
        q = q.where(s.c.ts_start <= until)
    if version is not None:
        q = q.where(s.c.version == version)
    req = err = rej = 0
    lat = np.zeros(len(LATENCY_BUCKETS_MS), np.int64)
    with engine.connect() as conn:
        for r in conn.execute(q):
            req, err, rej = req + r.requests, err + r.errors, rej + r.rejected
            lat += np.asarray(r.latency, np.int64)
    return Summary(req, err, rej, lat)


class _Steps:
    """Counts added up per time step (from raw rows or minutes), then the points a chart draws."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.buckets: dict[int, dict[str, Any]] = {}

    def add(self, t_end: float, version: int, requests: int, errors: int, rejected: int,
            latency: Any, peak: float) -> int:
        k = int(t_end // self.step_s)
        b = self.buckets.setdefault(k, {"requests": 0, "errors": 0, "rejected": 0, "refused": 0, "peak": 0.0,
                                        "latency": np.zeros(len(LATENCY_BUCKETS_MS), np.int64), "versions": {}})
        b["requests"] += requests
        b["errors"] += errors
        b["rejected"] += rejected
        # unrouted (version 0) requests that were neither a server error nor counted as rejected
        b["refused"] += rejected + (max(requests - errors - rejected, 0) if version == 0 else 0)
        b["latency"] += np.asarray(latency, np.int64)
        b["versions"][version] = b["versions"].get(version, 0) + requests
        b["peak"] = max(b["peak"], peak)
        return k

    def points(self) -> list[dict[str, Any]]:
        out = []
        for k in sorted(self.buckets):
            b = self.buckets[k]
            summ = Summary(b["requests"], b["errors"], b["rejected"], b["latency"])
            mean = b["requests"] / self.step_s
            out.append({"t": (k + 1) * self.step_s, "rps": mean, "peak_rps": max(b["peak"], mean),
                        "error_rate": summ.error_rate,
                        "refused_rate": b["refused"] / b["requests"] if b["requests"] else None,
                        "p50_ms": summ.quantile_ms(0.5), "p99_ms": summ.quantile_ms(0.99),
                        "versions": {str(v): n for v, n in b["versions"].items()}})
        return out


def series(engine: sa.Engine, model: str, *, since: float, step_s: float = 10.0) -> list[dict[str, Any]]:
    """Per time step, every worker together (report, dashboard, UI): requests/s as the step's mean
    and its busiest 5 s (a burst of 600 req/s must not read as a flat 9.5 on a day's chart), the
    server-error rate, the share refused (bad input, or never routed to a version: unknown model,
    no token), p50/p99, and requests per version (version "0": not routed). Steps with nothing
    recorded are left out: the charts draw them as gaps. Steps of a minute or more read the
    per-minute rollup (`serving_minutes`: 1,440 rows a day per version; the busiest interval then
    is the busiest a single worker reported), shorter ones `serving_stats` (every few seconds per
    worker); never the prediction log."""
    steps = _Steps(step_s)
    if step_s >= 60 and _rolled_up(engine, model, since):
        t = serving_minutes.c
        q = (sa.select(t.minute, t.version, t.requests, t.errors, t.rejected, t.peak_rps,
                       *[t[f"l{i}"] for i in range(len(LATENCY_BUCKETS_MS))])
             .where(t.model == model, t.minute >= int(since // 60)).order_by(t.minute))
        with engine.connect() as conn:
            for r in conn.execute(q):
                steps.add((r.minute + 1) * 60, r.version, r.requests, r.errors, r.rejected, r[6:], r.peak_rps)
        return steps.points()
    s = serving_stats
    q = (sa.select(s.c.ts_end, s.c.version, s.c.requests, s.c.errors, s.c.rejected, s.c.latency, s.c.ts_start)
         .where(s.c.model == model, s.c.ts_end >= since).order_by(s.c.ts_end))
    fine: dict[tuple[int, int], float] = {}  # (step, 5 s slot) → req/s, every worker together
    with engine.connect() as conn:
        for r in conn.execute(q):
            k = steps.add(r.ts_end, r.version, r.requests, r.errors, r.rejected, r.latency, 0.0)
            slot = (k, int(r.ts_end // 5))
            fine[slot] = fine.get(slot, 0.0) + r.requests / max(r.ts_end - r.ts_start, 1.0)
    for (k, _), rate in fine.items():
        steps.buckets[k]["peak"] = max(steps.buckets[k]["peak"], rate)
    return steps.points()


def _rolled_up(engine: sa.Engine, model: str, since: float) -> bool:
    """Whether the minutes cover the range: their first row is no later than the raw rows' first
    (a database migrated mid-range has raw rows from before the rollup existed)."""
    with engine.connect() as conn:
        first_min = conn.execute(sa.select(sa.func.min(serving_minutes.c.minute)).where(
            serving_minutes.c.model == model, serving_minutes.c.minute >= int(since // 60))).scalar()
        if first_min is None:
            return False
        first_raw = conn.execute(sa.select(sa.func.min(serving_stats.c.ts_end)).where(
            serving_stats.c.model == model, serving_stats.c.ts_end >= since)).scalar()
    return first_raw is None or int(first_raw // 60) >= first_min


def by_worker(engine: sa.Engine, model: str, *, since: float) -> dict[str, int]:
    """Requests per reporting worker (`host:pid`) since `since`: which replicas of the
    deployment are answering, from the one table all of them write."""
    s = serving_stats
    q = (sa.select(s.c.worker, sa.func.sum(s.c.requests)).where(s.c.model == model, s.c.ts_end >= since)
         .group_by(s.c.worker).order_by(s.c.worker))
    with engine.connect() as conn:
        return {w: int(n) for w, n in conn.execute(q)}
