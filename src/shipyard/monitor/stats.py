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

from shipyard.store.schema import serving_stats

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
    if rows:
        with engine.begin() as conn:
            conn.execute(serving_stats.insert(), rows)


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


def series(engine: sa.Engine, model: str, *, since: float, step_s: float = 10.0) -> list[dict[str, Any]]:
    """Requests/s, error rate and p50/p99 per time step, every worker together (report, dashboard)."""
    s = serving_stats
    q = (sa.select(s.c.ts_end, s.c.version, s.c.requests, s.c.errors, s.c.rejected, s.c.latency, s.c.ts_start)
         .where(s.c.model == model, s.c.ts_end >= since).order_by(s.c.ts_end))
    buckets: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            b = buckets.setdefault(int(r.ts_end // step_s), {"requests": 0, "errors": 0, "rejected": 0,
                                                             "latency": np.zeros(len(LATENCY_BUCKETS_MS), np.int64),
                                                             "versions": {}})
            b["requests"] += r.requests
            b["errors"] += r.errors
            b["rejected"] += r.rejected
            b["latency"] += np.asarray(r.latency, np.int64)
            b["versions"][r.version] = b["versions"].get(r.version, 0) + r.requests
    out = []
    for k in sorted(buckets):
        b = buckets[k]
        summ = Summary(b["requests"], b["errors"], b["rejected"], b["latency"])
        out.append({"t": (k + 1) * step_s, "rps": b["requests"] / step_s, "error_rate": summ.error_rate,
                    "p50_ms": summ.quantile_ms(0.5), "p99_ms": summ.quantile_ms(0.99),
                    "versions": {str(v): n for v, n in b["versions"].items()}})
    return out


def by_worker(engine: sa.Engine, model: str, *, since: float) -> dict[str, int]:
    """Requests per reporting worker (`host:pid`) since `since`: which replicas of the
    deployment are answering, from the one table all of them write."""
    s = serving_stats
    q = (sa.select(s.c.worker, sa.func.sum(s.c.requests)).where(s.c.model == model, s.c.ts_end >= since)
         .group_by(s.c.worker).order_by(s.c.worker))
    with engine.connect() as conn:
        return {w: int(n) for w, n in conn.execute(q)}
