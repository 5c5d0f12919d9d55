"""The evaluator: turns the shared prediction log into windows, tests each window against the
version's reference profile, keeps realised and estimated accuracy, and persists the result, so
that servers, `monitor status`, the dashboard and `autopilot` all read one state.

One evaluator per deployment: every server worker (and `shipyard monitor run`) runs the loop, but
only the holder of the lease `monitor:NAME` computes; the others take over within one lease time
if it dies. Windows are counted in predictions (`window`, tumbling), with a time bound: a window
not filled after `max_age_s` is evaluated with what it has (at least `min_window`). When traffic
brings more than `max_windows_per_tick` windows per tick, only the newest are tested and older
rows are counted as skipped. A regression's realised accuracy is its MAE and RMSE (`feedback.mae`).

Thresholds come from the bundle (calibrated at build for the sizes in `drift.SIZES`; a partly
filled window uses the largest it reaches), else from `drift.calibrate_all` once per size; too
few held-out rows for the configured window: the largest window they calibrate (its state says
so). Each window gets an accuracy estimate, whether to believe it (`estimate`), and the CUSUM."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from shipyard.monitor import alert_rules, drift, estimate, feedback, metrics
from shipyard.monitor import alerts as alerts_mod
from shipyard.monitor import predlog as predlog_mod
from shipyard.monitor.config import MonitorConfig
from shipyard.monitor.predlog import DEDUPE_SPAN_S
from shipyard.store import leases
from shipyard.store.schema import monitor_state, monitor_windows, prediction_chunks

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.registry import Registry

log = logging.getLogger("shipyard.monitor")


class _Recent:
    """Request ids seen in the last `span_s` seconds (at most `size` of them). A balancer retries
    within seconds, so an id seen again soon is the same request; clients that reuse ids over
    time (the V2 `id` need not be unique) still have every request counted."""

    def __init__(self, size: int, span_s: float = DEDUPE_SPAN_S) -> None:
        self.size, self.span_s = size, span_s
        self.at: dict[str, float] = {}
        self.order: collections.deque[str] = collections.deque()

    def new(self, ids: list[str], ts: np.ndarray) -> np.ndarray:
        """Mask of the entries that are not a repeat of an id seen within the span; remembers them."""
        keep = np.ones(len(ids), bool)
        for i, rid in enumerate(ids):
            t = float(ts[i])
            first = self.at.get(rid)
            if first is not None and abs(t - first) <= self.span_s:
                keep[i] = False
                continue
            if first is None:
                self.order.append(rid)
            self.at[rid] = t
        while len(self.order) > self.size:
            self.at.pop(self.order.popleft(), None)
        return keep


#: one chunk of the log as arrays: timestamps, predicted classes, confidences, the input
#: projection (None when the chunk has none) and the chunk's id on every row
_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]


@dataclass
class _Version:
    """What the evaluator keeps in memory for one model version."""

    reference: drift.Reference | None
    note: str | None  # why drift is not tested, when it is not
    classes: list[str]
    val_accuracy: float | None
    thresholds: dict[int, drift.Thresholds] = field(default_factory=dict)
    parts: list[_Part] = field(default_factory=list)
    buffered: int = 0
    windows: int = 0
    skipped: int = 0
    seen: int = 0
    rows_at: float = 0.0  # when it last had new predictions
    last: dict[str, Any] | None = None  # the newest window's results
    accuracy: dict[str, Any] = field(default_factory=lambda: {"realised": None, "n_labels": 0, "per_class": {}})
    accuracy_at: float = 0.0
    holdout_accuracy: float | None = None
    val_mae: float | None = None  # a regression's, from the bundle
    regression: bool = False  # realised MAE instead of accuracy
    window: int = 0  # the window size this version is cut into (the configured one unless it cannot be calibrated)
    window_note: str | None = None
    level: float = 0.0  # the sequential rule's CUSUM level
    estimator: estimate.Estimator | None = None
    rules: dict[str, dict[str, str]] = field(default_factory=dict)  # rule → its newest state and message


def _reference_of(bundle: Bundle | None) -> tuple[drift.Reference | None, str | None]:
    ref = bundle.reference if bundle is not None else None
    if ref is None:
        return None, "the bundle has no reference profile"
    try:
        return drift.Reference.from_arrays(ref), None
    except ValueError as e:
        return None, str(e)


class Evaluator:
    """Run `tick()` every `tick_s` (the server's thread, or `shipyard monitor run`)."""

    def __init__(self, registry: Registry, names: Callable[[], Iterable[str]], config: MonitorConfig | None = None, *,
                 holder: str | None = None, alerts: alert_rules.AlertConfig | None = alert_rules.DEFAULT_RULES
                 ) -> None:
        self.registry = registry
        self.engine: sa.Engine = registry.engine
        self.names = names
        self.config = config or MonitorConfig()
        self.config.check()
        self.holder = holder or leases.new_holder("monitor")
        self.alerter = alerts_mod.Alerter(self.engine, alerts) if alerts is not None else None
        self._alerts_at: dict[str, float] = {}
        self._held: set[str] = set()
        self._cursor: dict[str, int] = {}
        self._recent_ids: dict[str, _Recent] = {}
        self._ahead: dict[str, dict[int, float]] = {}  # chunks read above the cursor → their newest ts
        self._hole_since: dict[tuple[str, int], float] = {}
        self._versions: dict[tuple[str, int], _Version] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0

    # -- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Run in a daemon thread at a lower CPU priority (serving comes first)."""
        self._thread = threading.Thread(target=self._run, name="shipyard-evaluator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for name in list(self._held):
            with contextlib.suppress(Exception):
                leases.release(self.engine, f"monitor:{name}", self.holder)
        self._held.clear()
        if self.alerter is not None:
            self.alerter.close()

    def _run(self) -> None:
        predlog_mod._lower_priority()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the database may be away: keep trying
                log.warning("monitor: evaluation failed (%s); retrying", e)
            self._stop.wait(self.config.tick_s)

    def tick(self, now: float | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        """One round over every watched model this process holds the lease of; returns the
        states it persisted (tests call this directly)."""
        out = {}
        for name in self.names():
            if not leases.acquire(self.engine, f"monitor:{name}", self.holder, self.config.lease_ttl_s):
                if name in self._held:
                    log.info("monitor: %s is now evaluated elsewhere", name)
                    self._held.discard(name)
                continue
            if name not in self._held:
                self._take_over(name)
            out[name] = self._evaluate(name, time.time() if now is None else now)
        if time.monotonic() - self._last_retention > 3600:
            self._last_retention = time.monotonic()
            self._retain()
        return out

    def _take_over(self, name: str) -> None:
        """Start where the previous holder stopped: its cursor into the log, which it keeps
        before the rows it had buffered but not yet windowed, so they are read again."""
        with self.engine.connect() as conn:
            cursor = conn.execute(sa.select(sa.func.max(monitor_state.c.cursor))
                                  .where(monitor_state.c.model == name)).scalar()
        self._cursor[name] = int(cursor or 0)
        self._ahead.pop(name, None)
        self._recent_ids.pop(name, None)  # the rows it re-reads are new to this holder
        for key in [k for k in self._versions if k[0] == name]:
            del self._versions[key]
        self._held.add(name)
        log.info("monitor: evaluating %s (lease %s, from log chunk %d)", name, self.holder, self._cursor[name])

    # -- one model -----------------------------------------------------------------------------
    def _version(self, name: str, version: int) -> _Version:
        key = (name, version)
        if key not in self._versions:
            err: str | None
            try:
                bundle = self.registry.load(f"{name}@{version}")
            except Exception as e:  # noqa: BLE001 - a deleted version: still count its predictions
                bundle, err = None, str(e)
            else:
                err = None
            ref, note = _reference_of(bundle)
            summary = bundle.meta.reference if bundle is not None else None
            classes = list(bundle.meta.classes) if bundle is not None else []
            v = _Version(ref, err or note, classes, summary.val_accuracy if summary else None)
            v.holdout_accuracy = bundle.meta.metrics.holdout_accuracy if bundle is not None else None
            v.regression = bundle is not None and bundle.regression
            v.val_mae = bundle.meta.metrics.val_mae if bundle is not None else None
            v.window = self.config.window
            if ref is not None:
                try:
                    v.estimator = None if v.regression else estimate.Estimator(ref)
                except Exception as e:  # noqa: BLE001 - a reference without what the estimator needs
                    log.warning("monitor: %s v%d: no accuracy estimate (%s)", name, version, e)
                if ref.largest_window < self.config.window:
                    fits = [w for w in drift.SIZES if w <= ref.largest_window]
                    if fits:
                        v.window = fits[-1]
                        v.window_note = (f"watched in windows of {v.window}: the bundle's {ref.largest_window} "
                                         f"held-out calibration rows cannot calibrate windows of {self.config.window}")
                        log.warning("monitor: %s v%d %s", name, version, v.window_note)
            self._versions[key] = v
        return self._versions[key]

    def _read_new(self, name: str) -> dict[int, list[_Part]]:
        """Chunks after the cursor, as arrays per version."""
        p = prediction_chunks
        q = (sa.select(p.c.id, p.c.version, p.c.n, p.c.ts, p.c.predicted, p.c.confidence, p.c.projection,
                       p.c.proj_dim, p.c.request_ids, p.c.probabilities)
             .where(p.c.model == name, p.c.id > self._cursor.get(name, 0)).order_by(p.c.id).limit(500))
        if self._ahead.get(name):  # bounded: the cursor passes a hole within gap_s
            q = q.where(p.c.id.not_in(sorted(self._ahead[name])))
        out: dict[int, list[_Part]] = {}
        seen = self._recent_ids.setdefault(name, _Recent(self.config.dedupe_ids))
        ahead = self._ahead.setdefault(name, {})
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                if row.id in ahead:
                    continue
                ahead[row.id] = float(np.frombuffer(row.ts, "<f8")[-1])
                proj = (np.frombuffer(row.projection, "<f2").reshape(row.n, row.proj_dim).astype(np.float32)
                        if row.projection and row.proj_dim else None)
                probs = (np.frombuffer(row.probabilities, "<f2").reshape(row.n, -1).astype(np.float32)
                         if row.probabilities else None)
                part: _Part = (np.frombuffer(row.ts, "<f8"), np.frombuffer(row.predicted, "<i4"),
                               np.frombuffer(row.confidence, "<f4"), proj, np.full(row.n, row.id, np.int64), probs)
                keep = seen.new(row.request_ids.decode().split("\n"), part[0])
                if not keep.all():  # a request retried on another replica: counted once
                    ts, pred, conf, pj, ids, pr = part
                    part = (ts[keep], pred[keep], conf[keep], pj[keep] if pj is not None else None, ids[keep],
                            pr[keep] if pr is not None else None)
                out.setdefault(row.version, []).append(part)
        self._advance(name, ahead)
        return out

    def _advance(self, name: str, ahead: dict[int, float]) -> None:
        """Move the cursor over the ids read without a hole below them. Ids are one sequence for
        every model, so ids of other models' rows are no hole. On PostgreSQL an id is handed out
        at insert and becomes visible at commit: with several replicas writing, id 101 can be read
        before id 100 commits. The cursor waits at such a hole while the rows above it are recent
        (up to `gap_s`); an older hole is a rolled-back insert or rows retention removed."""
        cursor = self._cursor.get(name, 0)
        while ahead:
            lo = min(ahead)
            if lo == cursor + 1:
                cursor = lo
                del ahead[lo]
                continue
            filled = self._others(name, cursor, lo)  # other models' rows in the gap, in order
            for i in filled:
                if i != cursor + 1:
                    break
                cursor = i
            if cursor + 1 == lo:
                continue
            since = self._hole_since.setdefault((name, cursor), time.monotonic())
            if time.time() - ahead[lo] <= self.config.gap_s and time.monotonic() - since <= self.config.gap_s:
                break  # a commit may still be on its way
            log.info("monitor: %s: no log chunk %d..%d appeared; going on", name, cursor + 1, lo - 1)
            cursor = lo - 1
        self._hole_since = {k: v for k, v in self._hole_since.items() if k[0] != name or k[1] == cursor}
        self._cursor[name] = cursor

    def _others(self, name: str, after: int, before: int) -> list[int]:
        """Ids of other models' chunks between two ids (bounded: a long run is walked in steps)."""
        p = prediction_chunks
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(p.c.id).where(p.c.id > after, p.c.id < before, p.c.model != name)
                                     .order_by(p.c.id).limit(10_000)).scalars())

    def _thresholds(self, v: _Version, n: int) -> drift.Thresholds | None:
        if v.reference is None:
            return None
        n = v.reference.size_for(n)
        if n not in v.thresholds:
            c = self.config
            try:
                v.thresholds[n] = v.reference.thresholds(n, alpha=c.alpha, draws=c.draws)
            except ValueError as e:  # too few held-out rows for this window size
                v.note = str(e)
                return None
            log.info("monitor: thresholds for windows of %d (%s): %s", n,
                     "from the bundle" if v.thresholds[n].source == "bundle"
                     else f"calibrated in {v.thresholds[n].seconds:.1f} s",
                     {t: f"{getattr(v.thresholds[n], t):.2e}" for t in drift.TESTS})
        return v.thresholds[n]

    def _evaluate(self, name: str, now: float) -> dict[int, dict[str, Any]]:
        c = self.config
        for version, parts in self._read_new(name).items():
            v = self._version(name, version)
            v.parts.extend(parts)
            n_new = sum(len(part[0]) for part in parts)
            v.buffered += n_new
            v.seen += n_new
            v.rows_at = now
        windows: list[dict[str, Any]] = []
        states: dict[int, dict[str, Any]] = {}
        for (model, version), v in self._versions.items():
            if model != name:
                continue
            oldest = float(v.parts[0][0][0]) if v.parts else None
            stale = oldest is not None and now - oldest >= c.max_age_s and v.buffered >= min(c.min_window, v.window)
            if v.buffered >= v.window or stale:
                windows.extend(self._windows(name, version, v, now, stale))
            if now - v.accuracy_at >= c.accuracy_every_s:
                v.accuracy_at = now
                v.accuracy = feedback.mae(self.engine, name, version=version, last=c.accuracy_last) if v.regression \
                    else feedback.accuracy(self.engine, name, version=version, last=c.accuracy_last,
                                           classes=v.classes or None)
            states[version] = self._state(name, version, v, now)
        self._persist(name, windows, states, now)  # the windows first: alerts name them by their ids
        self._gauges(name, states)
        if self.alerter is not None and (windows or now - self._alerts_at.get(name, 0.0) >= c.alerts_every_s):
            self._alerts_at[name] = now
            active = {ver for (m, ver), v in self._versions.items()
                      if m == name and now - v.rows_at <= max(2 * c.max_age_s, 60)}
            findings = alerts_mod.check(self.engine, self.alerter.config, name, states, active=active, now=now)
            self.alerter.apply(name, findings, now)
            for f in findings:
                if f.version in states:
                    rules = self._versions[(name, f.version)].rules
                    rules[f.rule.name] = states[f.version]["rules"][f.rule.name] = {"state": f.state,
                                                                                     "message": f.message}
            with self.engine.begin() as conn:  # the rules' states join the state just persisted
                for ver in {f.version for f in findings if f.version in states}:
                    conn.execute(monitor_state.update().where(monitor_state.c.model == name,
                                                              monitor_state.c.version == ver)
                                 .values(state=states[ver]))
        return states

    def _windows(self, name: str, version: int, v: _Version, now: float, stale: bool) -> list[dict[str, Any]]:
        """Cut the buffer into full windows, oldest first (at most `max_windows_per_tick`: beyond
        that the oldest rows are skipped and counted), keep the remainder for the next one; a
        stale buffer is one window of whatever it holds."""
        ts = np.concatenate([p[0] for p in v.parts])
        pred = np.concatenate([p[1] for p in v.parts])
        conf = np.concatenate([p[2] for p in v.parts])
        projs = [p[3] for p in v.parts if p[3] is not None]
        proj = np.concatenate(projs) if len(projs) == len(v.parts) else None
        cid = np.concatenate([p[4] for p in v.parts])
        probs = [p[5] for p in v.parts if p[5] is not None]
        prob = np.concatenate(probs) if len(probs) == len(v.parts) and len({x.shape[1] for x in probs}) == 1 else None
        size = v.window if len(ts) >= v.window else len(ts)
        full = len(ts) // size
        start = max(0, full - self.config.max_windows_per_tick) * size
        v.skipped += start
        out = []
        for s0 in range(start, full * size, size):
            sl = slice(s0, s0 + size)
            out.append(self._window(name, version, v, now, ts[sl], pred[sl], conf[sl],
                                    proj[sl] if proj is not None else None, prob[sl] if prob is not None else None))
        rest = slice(full * size, len(ts))
        v.parts = [(ts[rest], pred[rest], conf[rest], proj[rest] if proj is not None else None, cid[rest],
                    prob[rest] if prob is not None else None)] if rest.start < len(ts) else []
        v.buffered = len(ts) - full * size
        return out

    def _window(self, name: str, version: int, v: _Version, now: float, ts: np.ndarray, pred: np.ndarray,
                conf: np.ndarray, proj: np.ndarray | None, probs: np.ndarray | None) -> dict[str, Any]:
        """Test one window (the rows of one model version, oldest first)."""
        size = len(ts)
        sl = slice(0, size)
        th = self._thresholds(v, size)
        tests = drift.evaluate(v.reference, th, proj[sl] if proj is not None else None, pred[sl], conf[sl],
                               probs) if th is not None and v.reference is not None else {}
        if v.estimator is not None:
            e = v.estimator.window(th, proj[sl] if proj is not None else None, pred[sl], conf[sl], tests)
        else:
            e = estimate.unavailable(v.note, v.regression)
        est = e.value
        alarm = any(t.alarm for t in tests.values())
        drift_d = {k: t.to_dict() for k, t in tests.items()}
        if th is not None and tests:
            v.level = drift.cusum_step(v.level, drift.evidence(drift_d), th.cusum)
        v.windows += 1
        v.last = {"n": size, "ts_first": float(ts[sl][0]), "ts_last": float(ts[sl][-1]), "evaluated_at": now,
                  "drift": drift_d, "alarm": alarm, "estimated_accuracy": est, "estimate": e.to_dict(),
                  "thresholds": th.to_dict() if th is not None else None,
                  "sequential": {"level": v.level, "allowance": th.cusum if th is not None else None,
                                 "alerting": th is not None and v.level > th.cusum}}
        if alarm:
            log.warning("monitor: %s v%d drift alarm on %d predictions: %s", name, version, size,
                        ", ".join(f"{k} p={t.p_value:.2e} ≤ {t.threshold:.2e}" for k, t in tests.items() if t.alarm))
        return {"model": name, "version": version, "ts_first": v.last["ts_first"], "ts_last": v.last["ts_last"],
                "n": size, "evaluated_at": now, "alarm": alarm,
                "results": {"drift": v.last["drift"], "estimated_accuracy": est, **e.to_dict(),
                            "sequential": v.last["sequential"],
                            "realised_accuracy": v.accuracy.get("realised"), "n_labels": v.accuracy.get("n_labels", 0)}}

    def _state(self, name: str, version: int, v: _Version, now: float) -> dict[str, Any]:
        last = v.last or {}
        return {
            "model": name, "version": version, "updated_at": now, "evaluator": self.holder,
            "window": {"size": v.window, "configured": self.config.window, "max_age_s": self.config.max_age_s,
                       "note": v.window_note,
                       **{k: last[k] for k in ("n", "ts_first", "ts_last", "evaluated_at") if k in last}},
            "pending": v.buffered, "predictions_seen": v.seen, "windows": v.windows, "skipped": v.skipped,
            "drift": last.get("drift", {}), "alarm": bool(last.get("alarm", False)),
            "sequential": last.get("sequential"), "rules": dict(v.rules),
            "thresholds": last.get("thresholds"), "note": v.note,
            "task": "regression" if v.regression else "classification",
            "accuracy": {"realised": v.accuracy.get("realised"), "estimated": last.get("estimated_accuracy"),
                         **estimate.verdict(last.get("estimate"), v.note),
                         "n_labels": v.accuracy.get("n_labels", 0), "per_class": v.accuracy.get("per_class", {}),
                         "validation": v.val_accuracy, "holdout_accuracy": v.holdout_accuracy,
                         "validation_mae": v.val_mae,
                         **{k: x for k, x in v.accuracy.items() if k.startswith("realised_")}},
        }

    def _persist(self, name: str, windows: list[dict[str, Any]], states: dict[int, dict[str, Any]],
                 now: float) -> None:
        # where a successor resumes: before the oldest chunk still buffered (not yet in a window),
        # so a failover re-reads the partial window instead of losing it (at worst the windowed
        # rows of that one chunk are counted twice)
        recent = max(2 * self.config.max_age_s, 60.0)  # a few rows of a version gone quiet do not pin it
        buffered = [int(p[4].min()) for (m, _), v in self._versions.items()
                    if m == name and now - v.rows_at <= recent for p in v.parts if len(p[4])]
        cursor = min([self._cursor.get(name, 0), *(c - 1 for c in buffered)])
        with self.engine.begin() as conn:
            if windows:
                conn.execute(monitor_windows.insert(), windows)
            if states:
                conn.execute(monitor_state.delete().where(monitor_state.c.model == name,
                                                          monitor_state.c.version.in_(list(states))))
                conn.execute(monitor_state.insert(), [{"model": name, "version": ver, "state": s, "cursor": cursor,
                                                       "updated_at": now} for ver, s in states.items()])

    def _gauges(self, name: str, states: dict[int, dict[str, Any]]) -> None:
        for version, s in states.items():
            ver = str(version)
            for test, r in s["drift"].items():
                metrics.DRIFT_SCORE.labels(name, ver, test).set(r["score"])
                metrics.DRIFT_ALARM.labels(name, ver, test).set(1.0 if r["alarm"] else 0.0)
            for kind in ("realised", "estimated", "validation"):
                value = s["accuracy"][kind]
                if value is not None:
                    metrics.ACCURACY.labels(name, ver, kind).set(value)
            for kind, key in (("realised", "realised_mae"), ("validation", "validation_mae")):
                if s["accuracy"].get(key) is not None:
                    metrics.MAE.labels(name, ver, kind).set(s["accuracy"][key])
            if s["accuracy"].get("estimated") is not None:
                metrics.ESTIMATE_RELIABLE.labels(name, ver).set(1.0 if s["accuracy"]["estimated_reliable"] else 0.0)

    def _retain(self) -> None:
        old = time.time() - self.config.retention_days * 86400
        with self.engine.begin() as conn:
            conn.execute(monitor_windows.delete().where(monitor_windows.c.ts_last < old))
