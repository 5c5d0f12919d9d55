"""The prediction log: for every answered request, the request id, time, model and version,
predicted class and confidence, and the input projected on the bundle's reference PCA basis;
the full input (float16 features) for a sampled share of requests and for a ring of the most
recent ones, so labels that arrive later can feed retraining.

Written off the hot path: the server appends a tuple of references per request (well under a
microsecond); every `flush_s` they become rows in one batch (numpy for the projections) written
by one statement. When the writer falls behind, the pending buffer is bounded and new
records are dropped and counted; inference never waits for the database. Retention (by age, by
rows per model, and the input ring) runs in the writer every minute.

The log lives in the registry's database, so predictions made by any worker or replica, and
labels received by any of them, meet there (`feedback`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from shipyard.registry.schema import feedback, prediction_inputs, predictions

log = logging.getLogger("shipyard.monitor")


@dataclass(frozen=True)
class LogConfig:
    """What is kept. `ring` full inputs per model (the most recent), plus a `sample` share kept
    until retention removes the row."""

    enabled: bool = True
    sample: float = 0.10
    ring: int = 50_000
    ring_rate: float = 2_000.0  # inputs per second per worker written to the ring, at most
    retention_days: float = 30.0
    max_rows: int = 2_000_000  # per model
    flush_s: float = 0.25
    max_pending: int = 100_000  # records waiting for the writer; beyond it they are dropped


class PredictionLog:
    """One per server process. `record` is called on the event loop; everything else runs on the
    writer thread (or in `flush` for tests and feedback)."""

    def __init__(self, engine: sa.Engine, config: LogConfig | None = None) -> None:
        self.engine = engine
        self.config = config or LogConfig()
        self.pending: deque[tuple[Any, ...]] = deque()
        self._pending_rows = 0
        self.dropped = 0
        self.written = 0
        self._prefix = (int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF) << 32
        self._next_id = 1
        self._rng = np.random.default_rng()
        self._lock = threading.Lock()  # one write at a time
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shipyard-predlog")
        self._last_retention = 0.0
        self._ring_clock = time.monotonic()
        self.ring_skipped = 0
        self.build_s = self.insert_s = 0.0  # where the writer's time goes
        self._paramstyle = engine.dialect.paramstyle
        from shipyard.monitor import metrics

        self._metrics = metrics

    # -- the hot path ------------------------------------------------------------------------
    def record(self, runtime: Any, request_id: str, features: np.ndarray, probs: np.ndarray) -> None:
        """One request (the unbatched path)."""
        self.record_batch(runtime, [request_id], [len(features)], features, probs)

    def record_batch(self, runtime: Any, request_ids: list[str], counts: list[int], features: np.ndarray,
                     probs: np.ndarray) -> None:
        """One model call: the request ids, how many instances each sent, and the batch's
        features and probabilities in the same order (the batcher's hook). Requests tagged None
        (copies sent to a shadow) are not logged."""
        if None in request_ids:
            keep = [t is not None for t in request_ids]
            if not any(keep):
                return
            mask = np.repeat(keep, counts)
            request_ids = [t for t in request_ids if t is not None]
            counts = [c for c, k in zip(counts, keep, strict=True) if k]
            features, probs = features[mask], probs[mask]
        if self._pending_rows >= self.config.max_pending:
            self.dropped += len(features)
            self._metrics.LOG_DROPPED.labels(runtime.name).inc(len(features))
            return
        self._pending_rows += len(features)
        self.pending.append((runtime, request_ids, counts, features, probs, time.time()))

    # -- the writer --------------------------------------------------------------------------
    # The rows are built on the event loop (numpy, a few µs per flush-row, in slices every
    # `flush_s`) and written by one statement on a helper thread that holds the GIL only to
    # start and finish it. A writer *thread* building rows measured far worse: every time it
    # wanted the GIL the loop was made to drop it, and the handoffs cost more than the work.
    def start(self) -> None:
        """Start writing in the background (call on the server's event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending and stop (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._pool, self.flush)
        self._pool.shutdown(wait=True)
        if self.written:
            log.info("prediction log: %d rows, %.2f µs/row building, %.2f µs/row writing; %d dropped, "
                     "%d kept out of the input ring by its rate cap", self.written, self.build_s / self.written * 1e6,
                     self.insert_s / self.written * 1e6, self.dropped, self.ring_skipped)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.flush_s)
            batch = self._take()
            if batch:
                t0 = time.perf_counter()
                rows, chunks = self._rows(batch)
                self.build_s += time.perf_counter() - t0
                try:
                    await loop.run_in_executor(self._pool, self._write, batch, rows, chunks)
                except Exception as e:  # noqa: BLE001 - the database may be away: keep serving, retry later
                    self._requeue(batch)
                    log.warning("prediction log: cannot write (%s); %d record(s) waiting", e, len(self.pending))
            if time.monotonic() - self._last_retention > 60:
                self._last_retention = time.monotonic()
                try:
                    await loop.run_in_executor(self._pool, self.retain)
                except Exception as e:  # noqa: BLE001
                    log.warning("prediction log: retention failed (%s); will retry", e)

    def _take(self) -> list[tuple[Any, ...]]:
        batch = []
        pending = self.pending
        while pending:
            batch.append(pending.popleft())
        self._pending_rows = 0
        return batch

    def _requeue(self, batch: list[tuple[Any, ...]]) -> None:
        """Put records back (bounded) so a short database outage loses nothing."""
        for rec in reversed(batch):
            if self._pending_rows + len(rec[3]) > self.config.max_pending:
                self.dropped += len(rec[3])
                continue
            self.pending.appendleft(rec)
            self._pending_rows += len(rec[3])

    def _write(self, batch: list[tuple[Any, ...]], rows: list[tuple[Any, ...]], chunks: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self._insert(rows, chunks)
        self.insert_s += time.perf_counter() - t0
        self.written += len(rows)
        by_model: dict[str, int] = {}
        for rec in batch:
            by_model[rec[0].name] = by_model.get(rec[0].name, 0) + len(rec[3])
        for name, n in by_model.items():
            self._metrics.LOGGED.labels(name).inc(n)

    def flush(self) -> int:
        """Write everything pending now, from any thread (feedback, shutdown, tests); returns the
        number of rows written."""
        batch = self._take()
        if not batch:
            return 0
        try:
            rows, chunks = self._rows(batch)
            self._write(batch, rows, chunks)
        except Exception:
            self._requeue(batch)
            raise
        return len(rows)

    def _rows(self, batch: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        """Records → prediction rows and input chunks. Per-instance work happens in numpy and in
        C-level iteration (zip, map): a Python loop per row cost more than the request itself."""
        rows: list[tuple[Any, ...]] = []
        chunks: list[dict[str, Any]] = []
        by_rt: dict[int, list[tuple[Any, ...]]] = {}
        for rec in batch:
            by_rt.setdefault(id(rec[0]), []).append(rec)
        cfg = self.config
        for recs in by_rt.values():
            rt = recs[0][0]
            shape = list(recs[0][3].shape[1:])
            feats = (recs[0][3] if len(recs) == 1 else np.concatenate([r[3] for r in recs])).reshape(
                -1, int(np.prod(shape)))
            probs = recs[0][4] if len(recs) == 1 else np.concatenate([r[4] for r in recs])
            n = len(feats)
            rids: list[str] = []
            for _, tags, counts, f, _, _ in recs:
                if len(tags) == len(f):  # the common case: one instance per request
                    rids.extend(tags)
                else:  # one row per instance: a request of several instances logs `ID/0`, `ID/1`, …
                    for rid, k in zip(tags, counts, strict=True):
                        rids.extend([rid] if k == 1 else [f"{rid}/{j}" for j in range(k)])
            ts = np.repeat([r[5] for r in recs], [len(r[3]) for r in recs])
            ids = self._prefix | np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
            sampled = self._rng.random(n) < cfg.sample
            rows.extend(zip(ids.tolist(), rids, itertools.repeat(rt.name), itertools.repeat(int(rt.version or 0)),
                            ts.tolist(), probs.argmax(axis=1).tolist(), probs.max(axis=1).tolist(), sampled.tolist()))
            proj = rt.project(feats) if getattr(rt, "project", None) else None
            if proj is not None:  # what drift windows read: every row's projection, float16, columnar
                chunks.append({"model": rt.name, "version": int(rt.version or 0), "kind": "proj",
                               "ts_first": float(ts[0]), "ts_last": float(ts[-1]), "n": n, "ids": ids.tobytes(),
                               "shape": [proj.shape[1]], "lo": 0.0, "hi": 0.0, "data": proj.tobytes()})
            ring = self._ring_share(n)
            for kind, mask in (("ring", ring), ("sample", sampled)):
                if mask is None or not mask.any():
                    continue
                x = feats[mask]
                lo, hi = float(x.min()), float(x.max())
                scale = (hi - lo) / 255 or 1.0
                chunks.append({"model": rt.name, "version": int(rt.version or 0), "kind": kind,
                               "ts_first": float(ts[mask][0]), "ts_last": float(ts[mask][-1]), "n": int(mask.sum()),
                               "ids": ids[mask].tobytes(), "shape": shape, "lo": lo, "hi": hi,
                               "data": np.rint((x - lo) / scale).astype(np.uint8).tobytes()})
        return rows, chunks

    def _ring_share(self, n: int) -> np.ndarray | None:
        """Which of `n` new records go to the recent-inputs ring: all of them up to `ring_rate` per
        second; beyond that rate an even share (the ring still spans the most recent traffic, and
        writing every input at 10,000+ requests a second would cost more than serving them)."""
        cfg = self.config
        if cfg.ring <= 0:
            return None
        now = time.monotonic()
        elapsed = max(now - self._ring_clock, 1e-3)
        self._ring_clock = now
        allowed = cfg.ring_rate * elapsed
        if n <= allowed:
            return np.ones(n, bool)
        self.ring_skipped += n - int(allowed)
        return self._rng.random(n) < allowed / n

    def _insert(self, rows: list[tuple[Any, ...]], chunks: list[dict[str, Any]]) -> None:
        """All rows in one statement that unpacks a JSON array inside the database: one call that
        releases the GIL once, where executemany released and re-took it per row (and on a busy
        server each re-take waits its turn behind the event loop)."""
        with self.engine.begin() as conn:
            if rows:
                conn.exec_driver_sql(self._bulk_sql, (orjson.dumps(rows).decode(),))
            if chunks:
                conn.execute(prediction_inputs.insert(), chunks)

    @property
    def _bulk_sql(self) -> str:
        cols = "id, request_id, model, version, ts, predicted, confidence, sampled"
        if self.engine.dialect.name == "postgresql":
            return (f"INSERT INTO predictions ({cols}) SELECT (v->>0)::bigint, v->>1, v->>2, (v->>3)::int, "
                    "(v->>4)::float8, (v->>5)::int, (v->>6)::float8, (v->>7)::boolean "
                    "FROM jsonb_array_elements(%s::jsonb) AS v")
        return (f"INSERT INTO predictions ({cols}) SELECT value->>0, value->>1, value->>2, value->>3, value->>4, "
                "value->>5, value->>6, value->>7 FROM json_each(?)")

    def retain(self) -> None:
        """Drop rows past the age limit or beyond the per-model row cap, ring chunks beyond the
        ring's size, and sample chunks whose predictions are gone."""
        cfg = self.config
        p, c = predictions, prediction_inputs
        with self.engine.begin() as conn:
            old = time.time() - cfg.retention_days * 86400
            conn.execute(p.delete().where(p.c.ts < old))
            conn.execute(c.delete().where(c.c.ts_last < old))
            for (model,) in conn.execute(sa.select(p.c.model).distinct()).all():
                cutoff = conn.execute(sa.select(p.c.ts).where(p.c.model == model).order_by(p.c.ts.desc())
                                      .offset(cfg.max_rows).limit(1)).scalar()
                if cutoff is not None:
                    conn.execute(p.delete().where(p.c.model == model, p.c.ts <= cutoff))
                    conn.execute(c.delete().where(c.c.model == model, c.c.kind == "sample", c.c.ts_last <= cutoff))
                kept = 0
                for cid, n in conn.execute(sa.select(c.c.id, c.c.n).where(c.c.model == model, c.c.kind == "ring")
                                           .order_by(c.c.ts_last.desc())).all():
                    if kept >= cfg.ring:
                        conn.execute(c.delete().where(c.c.id == cid))
                    kept += n


def inputs_for(engine: sa.Engine, model: str, ids: list[int]) -> dict[int, np.ndarray]:
    """The kept full inputs of these prediction ids (ring or sample), as float32 features."""
    want = set(ids)
    out: dict[int, np.ndarray] = {}
    c = prediction_inputs
    with engine.connect() as conn:
        for chunk_ids, data, shape, lo, hi, n in conn.execute(
                sa.select(c.c.ids, c.c.data, c.c.shape, c.c.lo, c.c.hi, c.c.n).where(c.c.model == model)):
            cid = np.frombuffer(chunk_ids, dtype=np.int64)
            hit = np.flatnonzero(np.isin(cid, list(want)))
            if not len(hit):
                continue
            x = np.frombuffer(data, dtype=np.uint8).reshape(n, -1)
            scale = (hi - lo) / 255 or 1.0
            for j in hit:
                out[int(cid[j])] = (x[j].astype(np.float32) * scale + lo).reshape(shape)
    return out


# -- feedback -------------------------------------------------------------------------------
@dataclass
class FeedbackResult:
    items: list[dict[str, Any]]

    @property
    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "unknown": 0, "late": 0, "invalid": 0}
        for item in self.items:
            out[item["status"]] += 1
        return out


def record_feedback(engine: sa.Engine, model: str, classes: list[str], items: list[tuple[Any, Any]],
                    *, horizon_s: float, now: float | None = None) -> FeedbackResult:
    """Store true labels for earlier request ids of `model`. Each item is reported: accepted,
    unknown (no logged prediction with that id), late (the prediction is older than the
    horizon), or invalid (not one of the model's classes). A second label for one id replaces
    the first. The join with the predictions happens here, in the database, so a label may
    reach any worker."""
    now = time.time() if now is None else now
    index = {c: i for i, c in enumerate(classes)}
    results: list[dict[str, Any]] = []
    labels: dict[str, int] = {}
    for rid, label in items:
        key = str(label) if isinstance(label, (str, int)) and not isinstance(label, bool) else None
        if key is None or key not in index:
            results.append({"id": rid, "status": "invalid",
                            "error": f"label {label!r} is not one of the model's classes {classes}"})
        else:
            labels[rid] = index[key]
            results.append({"id": rid, "status": "accepted"})
    if labels:
        with engine.begin() as conn:
            seen: dict[str, float] = {}
            ids = list(labels)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = (sa.select(predictions.c.request_id, sa.func.max(predictions.c.ts))
                     .where(predictions.c.model == model, predictions.c.request_id.in_(chunk))
                     .group_by(predictions.c.request_id))
                seen.update({r: float(t) for r, t in conn.execute(q).all()})
            rows = []
            for item in results:
                rid = item["id"]
                if item["status"] != "accepted":
                    continue
                if rid not in seen:
                    item["status"] = "unknown"
                    item["error"] = f"no logged prediction of {model!r} has id {rid!r}"
                elif now - seen[rid] > horizon_s:
                    item["status"] = "late"
                    item["error"] = f"the prediction is older than the feedback horizon ({horizon_s / 3600:g} h)"
                else:
                    rows.append({"model": model, "request_id": rid, "label": labels[rid], "ts": now})
            if rows:
                conn.execute(feedback.delete().where(feedback.c.model == model,
                                                     feedback.c.request_id.in_([r["request_id"] for r in rows])))
                conn.execute(feedback.insert(), rows)
    return FeedbackResult(results)


def accuracy(engine: sa.Engine, model: str, *, version: int | None = None, last: int | None = None,
             classes: list[str] | None = None) -> dict[str, Any]:
    """Realised accuracy from labels joined with predictions: overall and per true class, over
    the `last` labelled predictions (all when None). A label counts even when the prediction's
    input is no longer kept: the predicted class is in the row."""
    p, f = predictions, feedback
    q = sa.select(f.c.label, p.c.predicted, p.c.version).select_from(
        f.join(p, sa.and_(p.c.model == f.c.model, p.c.request_id == f.c.request_id))).where(f.c.model == model)
    if version is not None:
        q = q.where(p.c.version == version)
    q = q.order_by(p.c.ts.desc())
    if last is not None:
        q = q.limit(last)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    if not rows:
        return {"n_labels": 0, "realised": None, "per_class": {}}
    y = np.array([r[0] for r in rows])
    pred = np.array([r[1] for r in rows])
    per_class = {}
    for c in np.unique(y):
        name = classes[c] if classes and c < len(classes) else str(c)
        per_class[name] = {"accuracy": float((pred[y == c] == c).mean()), "n": int((y == c).sum())}
    return {"n_labels": len(rows), "realised": float((y == pred).mean()), "per_class": per_class}
