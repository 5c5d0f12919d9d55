"""Alert rules: a TOML file of conditions over the persisted monitoring state, checked by the
evaluator that holds the model's lease (so several workers or replicas raise one alert, not
one each). An alert is stored, logged and POSTed to a webhook; it stays one alert while its
condition holds, resolves when it clears, and reopens (without a second notification) if the
condition returns within the cooldown: one incident, one alert.

The rules and their file are `alert_rules` (keys: `shipyard monitor rules --example`). Drift
rules follow a calibrated CUSUM over the windows' evidence unless they give `windows = N` (N
consecutive alarming windows); an accuracy rule on an estimate that cannot be believed is
`unknown` (neither firing nor ok: an alert it had open shows as unknown, and autopilot, which
acts on firing alerts, waits); the `labels` kind asks for labels while that lasts.

An open alert can be acknowledged (`acknowledge`, `shipyard monitor ack`): its webhook is silenced
until it resolves, and the resolution is still sent, so the receiver knows the incident ended.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.errors import NotFound, UsageError
from shipyard.monitor import drift, feedback, stats
from shipyard.monitor.alert_rules import PER_VERSION, AlertConfig, Rule
from shipyard.store.schema import alerts, monitor_windows

log = logging.getLogger("shipyard.monitor")


# -- checking --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One rule's verdict for one model (version None: the model as a whole)."""

    rule: Rule
    version: int | None
    firing: bool
    message: str
    details: dict[str, Any]
    unknown: bool = False  # the rule cannot decide (an estimate that cannot be believed)

    @property
    def state(self) -> str:
        return "unknown" if self.unknown else "firing" if self.firing else "ok"


def check(engine: sa.Engine, config: AlertConfig, name: str, states: dict[int, dict[str, Any]], *,
          active: set[int], now: float) -> list[Finding]:
    """Every rule for `name` against the persisted state (`states`: the evaluator's per-version
    state; `active`: versions that still receive traffic — the others' alerts resolve, also those
    of versions this evaluator has not seen since it started)."""
    out: list[Finding] = []
    with engine.connect() as conn:  # versions with an open alert that no state covers (e.g. after a restart)
        open_versions = set(conn.execute(sa.select(alerts.c.version).where(
            alerts.c.model == name, alerts.c.status.in_(OPEN), alerts.c.kind.in_(PER_VERSION),
            alerts.c.version.is_not(None))).scalars())
    for rule in config.rules:
        if not rule.applies_to(name):
            continue
        if rule.kind in PER_VERSION:
            for version in sorted(set(states) | open_versions):
                state = states.get(version)
                if version not in active or state is None:
                    out.append(Finding(rule, version, False, f"v{version} no longer receives traffic", {}))
                elif rule.kind == "drift":
                    out.append(_drift(engine, rule, name, version))
                elif rule.kind == "accuracy":
                    out.append(_accuracy(engine, rule, name, version, state))
                elif rule.kind == "mae":
                    out.append(_mae(engine, rule, name, version, state))
                else:
                    out.append(_labels(engine, rule, name, version, state))
        else:
            out.append(_serving(engine, rule, name, now))
    return out


OPEN, SEQUENTIAL_LOOKBACK = ("firing", "unknown"), 50  # open alert states; windows the CUSUM is computed over


def _drift(engine: sa.Engine, rule: Rule, name: str, version: int) -> Finding:
    w = monitor_windows
    look = rule.windows if rule.windows is not None else SEQUENTIAL_LOOKBACK
    with engine.connect() as conn:
        found = conn.execute(sa.select(w.c.results, w.c.id).where(w.c.model == name, w.c.version == version)
                             .order_by(w.c.ts_last.desc(), w.c.id.desc()).limit(look)).all()
    rows: list[tuple[dict[str, Any], int | None]] = [(r[0], r[1]) for r in found]  # newest first
    if rule.windows is None:
        return _sequential(rule, version, rows)
    fired = [[t for t in rule.tests if (res.get("drift", {}).get(t) or {}).get("alarm")] for res, _ in rows]
    firing = len(rows) == rule.windows and all(fired)
    tests = sorted({t for f in fired for t in f})
    newest = rows[0][0].get("drift", {}) if rows else {}
    details = {t: {"p_value": newest[t]["p_value"], "threshold": newest[t]["threshold"], "score": newest[t]["score"]}
               for t in tests if t in newest}
    msg = (f"v{version}: {', '.join(tests)} drift in the last {rule.windows} window(s)" if firing
           else f"v{version}: no drift alarm in the last {rule.windows} window(s)")
    ids = [wid for _, wid in rows if wid is not None] if firing else []
    return Finding(rule, version, firing, msg, {"tests": tests, "newest": details, "windows": ids})


def _sequential(rule: Rule, version: int, rows: list[tuple[dict[str, Any], int | None]]) -> Finding:
    """The CUSUM over the rule's tests, oldest window first; its allowance is the one calibrated
    with each window's thresholds. Windows that took part: those since the level last was 0."""
    level, tests = 0.0, set()
    since: list[tuple[int | None, dict[str, Any]]] = []
    allowance = 0.0
    for res, wid in reversed(rows):
        th = res.get("sequential") or {}
        allowance = th.get("allowance") or 0.0
        ev = drift.evidence(res.get("drift", {}), rule.tests)
        if not np.isfinite(ev):
            continue
        level = drift.cusum_step(level, ev, allowance)
        since = [] if level == 0 else [*since, (wid, res)]
    firing = bool(rows) and level > allowance
    for _, res in since:
        tests |= {t for t in rule.tests if (res.get("drift", {}).get(t) or {}).get("alarm")}
    newest = rows[0][0].get("drift", {}) if rows else {}
    details = {t: {"p_value": newest[t]["p_value"], "threshold": newest[t]["threshold"], "score": newest[t]["score"]}
               for t in rule.tests if t in newest}
    shown = ", ".join(sorted(tests)) or "near misses of " + "/".join(rule.tests)
    msg = (f"v{version}: drift ({shown}); sequential level {level:.1f} > {allowance:.1f}" if firing
           else f"v{version}: no drift (sequential level {level:.1f} ≤ {allowance:.1f})")
    ids = [wid for wid, _ in since if wid is not None] if firing else []
    return Finding(rule, version, firing, msg, {"tests": sorted(tests), "newest": details, "level": level,
                                                "allowance": allowance, "windows": ids})


def _labels(engine: sa.Engine, rule: Rule, name: str, version: int, state: dict[str, Any]) -> Finding:
    acc = state.get("accuracy", {})
    if acc.get("estimated") is None or acc.get("estimated_reliable", True):
        return Finding(rule, version, False, f"v{version}: the accuracy estimate can be believed", {})
    got = feedback.accuracy(engine, name, version=version, last=rule.last)
    n = int(got["n_labels"])
    firing = n < rule.min_labels
    why = acc.get("estimated_reason") or "the estimate cannot be believed"
    msg = (f"v{version}: send labels — {n} of the {rule.min_labels} needed have arrived, and {why}" if firing
           else f"v{version}: the estimate cannot be believed, but {n} labels give the realised accuracy")
    return Finding(rule, version, firing, msg, {"n_labels": n, "min_labels": rule.min_labels, "reason": why})


def _accuracy(engine: sa.Engine, rule: Rule, name: str, version: int, state: dict[str, Any]) -> Finding:
    acc = state.get("accuracy", {})
    bound = rule.below
    if bound is None:
        val = acc.get("validation")
        if val is None:
            return Finding(rule, version, False, f"v{version}: the bundle records no validation accuracy", {})
        bound = float(val) - float(rule.below_validation_by or 0)
    if rule.source == "estimated":
        value, n = acc.get("estimated"), state.get("window", {}).get("n", 0)
        if value is not None and not acc.get("estimated_reliable", True):
            why = acc.get("estimated_reason") or "the estimate cannot be believed"
            msg = f"v{version}: estimated accuracy {value:.1%} cannot be believed: {why}"
            return Finding(rule, version, False, msg, {"value": value, "bound": bound, "n": n, "reason": why},
                           unknown=True)
    else:
        got = feedback.accuracy(engine, name, version=version, last=rule.last)
        value, n = got["realised"], got["n_labels"]
        if n < rule.min_labels:
            value = None
    firing = value is not None and value < bound
    shown = "unknown" if value is None else f"{value:.1%}"
    msg = f"v{version}: {rule.source} accuracy {shown} {'<' if firing else '≥'} {bound:.1%} (n={n})"
    return Finding(rule, version, firing, msg, {"value": value, "bound": bound, "n": n})


def _mae(engine: sa.Engine, rule: Rule, name: str, version: int, state: dict[str, Any]) -> Finding:
    """A regression's realised MAE (lower is better) over its newest labels against a bound."""
    if state.get("task") != "regression":
        return Finding(rule, version, False, f"v{version}: not a regression (no MAE)", {})
    bound = rule.above
    if bound is None:
        val = state.get("accuracy", {}).get("validation_mae")
        if val is None:
            return Finding(rule, version, False, f"v{version}: the bundle records no validation MAE", {})
        bound = float(val) * (1 + float(rule.above_validation_by or 0))
    got = feedback.mae(engine, name, version=version, last=rule.last)
    value, n = got["realised_mae"], int(got["n_labels"])
    if n < rule.min_labels:
        value = None
    firing = value is not None and value > bound
    shown = f"unknown ({n} of {rule.min_labels} labels)" if value is None else f"{value:.4g}"
    msg = f"v{version}: realised MAE {shown} {'>' if firing else '≤'} {bound:.4g} (n={n})"
    return Finding(rule, version, firing, msg, {"value": value, "bound": bound, "n": n})


def _serving(engine: sa.Engine, rule: Rule, name: str, now: float) -> Finding:
    s = stats.summary(engine, name, since=now - rule.over_s)
    enough = s.requests >= rule.min_requests
    if rule.kind == "latency_p99":
        value, bound = s.quantile_ms(0.99), rule.above_ms
        firing = enough and value is not None and bound is not None and value > bound
        shown = "unknown" if value is None else f"{value:.1f} ms"
        msg = f"p99 latency {shown} over {rule.over_s:g} s ({s.requests} requests; limit {bound:g} ms)"
    else:
        value = s.error_rate if rule.kind == "error_rate" else s.rejection_rate
        bound = rule.above
        firing = enough and value is not None and bound is not None and value > bound
        what = "server errors" if rule.kind == "error_rate" else "rejected inputs"
        shown = "unknown" if value is None else f"{value:.1%}"
        msg = f"{what} {shown} of {s.requests} requests over {rule.over_s:g} s (limit {bound:.1%})"
    return Finding(rule, None, firing, msg, {"value": value, "bound": bound, **s.to_dict()})


# -- the lifecycle ---------------------------------------------------------------------------------
class Alerter:
    """Applies findings to the stored alerts and notifies the webhook (on its own thread: a slow
    receiver must not hold up evaluation, or the evaluator's lease)."""

    def __init__(self, engine: sa.Engine, config: AlertConfig) -> None:
        self.engine = engine
        self.config = config
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shipyard-webhook")
        self.sent: list[dict[str, Any]] = []  # tests and logs

    def apply(self, name: str, findings: list[Finding], now: float) -> list[dict[str, Any]]:
        """Open, refresh, reopen or resolve alerts; returns the notifications due. A firing
        notification is sent when an incident opens (a new row); none while the row is
        acknowledged (`acknowledge`), whatever happens to it, until it resolves: the resolved
        notification is always sent. A new incident later is a new row and notifies again."""
        a = alerts
        due: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            for f in findings:
                key = [a.c.model == name, a.c.rule == f.rule.name,
                       a.c.version.is_(None) if f.version is None else a.c.version == f.version]
                latest = conn.execute(sa.select(a).where(*key).order_by(a.c.id.desc()).limit(1)).mappings().first()
                if f.unknown:  # no decision: an open alert shows as unknown (not firing), none is opened
                    if latest is not None and latest["status"] in OPEN:
                        conn.execute(a.update().where(a.c.id == latest["id"])
                                     .values(status="unknown", last_seen_at=now, message=f.message))
                    continue
                if f.firing:
                    if latest is not None and latest["status"] == "unknown":  # decided again: the same incident
                        conn.execute(a.update().where(a.c.id == latest["id"])
                                     .values(status="firing", last_seen_at=now, message=f.message, details=f.details))
                    elif latest is not None and latest["status"] == "firing":
                        details = dict(f.details)
                        if "windows" in details:  # every window that took part in the incident (for trace)
                            seen = (latest["details"] or {}).get("windows", [])
                            details["windows"] = (seen + [w for w in details["windows"] if w not in seen])[-1000:]
                        conn.execute(a.update().where(a.c.id == latest["id"])
                                     .values(last_seen_at=now, message=f.message, details=details))
                    elif latest is not None and latest["resolved_at"] and \
                            now - latest["resolved_at"] < self.config.cooldown_s:
                        conn.execute(a.update().where(a.c.id == latest["id"])
                                     .values(status="firing", resolved_at=None, last_seen_at=now, message=f.message,
                                             details=f.details))
                        log.warning("alert %s reopened within the cooldown for %s: %s", f.rule.name, name, f.message)
                    else:
                        row = {"model": name, "version": f.version, "rule": f.rule.name, "kind": f.rule.kind,
                               "severity": f.rule.severity, "status": "firing", "opened_at": now,
                               "last_seen_at": now, "resolved_at": None, "message": f.message,
                               "details": f.details, "notified": "pending" if self.config.webhook else "none"}
                        pk = conn.execute(a.insert().values(**row)).inserted_primary_key
                        assert pk is not None  # one row inserted
                        alert_id = pk[0]
                        log.warning("ALERT %s (%s) for %s: %s", f.rule.name, f.rule.severity, name, f.message)
                        due.append({"status": "firing", "alert": {"id": alert_id, **row}})
                elif latest is not None and latest["status"] in OPEN:
                    conn.execute(a.update().where(a.c.id == latest["id"])
                                 .values(status="resolved", resolved_at=now, last_seen_at=now,
                                         details={**(latest["details"] or {}), "resolution": f.message}))
                    log.warning("resolved: alert %s for %s (%s)", f.rule.name, name, f.message)
                    due.append({"status": "resolved", "alert": {**dict(latest), "status": "resolved",
                                                                "resolved_at": now, "resolution": f.message}})
        due = [n for n in due if n["status"] == "resolved" or n["alert"].get("acknowledged_at") is None]
        if self.config.webhook is not None:
            for note in due:
                self._pool.submit(self._notify, note)
        return due

    def _notify(self, note: dict[str, Any]) -> None:
        hook = self.config.webhook
        assert hook is not None
        body = json.dumps({"source": "shipyard", **note}, default=str).encode()
        outcome, delay = "failed", 0.5
        for attempt in range(hook.retries + 1):
            if note["status"] == "firing" and self._acknowledged(note["alert"]["id"]):
                outcome = "silenced"  # acknowledged while this waited or retried: the operator knows
                break
            req = urllib.request.Request(hook.url, data=body, method="POST",
                                         headers={"content-type": "application/json", **hook.headers})
            try:  # the standard library: a serving-only install has no HTTP client package
                with urllib.request.urlopen(req, timeout=hook.timeout_s) as r:  # noqa: S310 - the user's URL
                    r.read()
                outcome = "sent"
                break
            except urllib.error.HTTPError as e:
                e.close()
                log.warning("webhook %s answered %d (attempt %d)", hook.url, e.code, attempt + 1)
            except (urllib.error.URLError, OSError) as e:
                log.warning("webhook %s: %s (attempt %d)", hook.url, e, attempt + 1)
            if attempt < hook.retries:
                time.sleep(delay)
                delay *= 2
        self.sent.append({**note, "outcome": outcome})
        if note["status"] == "firing":
            try:
                with self.engine.begin() as conn:
                    conn.execute(alerts.update().where(alerts.c.id == note["alert"]["id"]).values(notified=outcome))
            except Exception as e:  # noqa: BLE001
                log.warning("cannot record the webhook outcome: %s", e)

    def _acknowledged(self, alert_id: int) -> bool:
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.select(alerts.c.acknowledged_at).where(alerts.c.id == alert_id)
                                    ).scalar() is not None
        except Exception as e:  # noqa: BLE001 - the database away: notify rather than stay silent
            log.warning("cannot read whether alert %s is acknowledged: %s", alert_id, e)
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def acknowledge(engine: sa.Engine, alert_id: int, *, actor: str, reason: str | None = None,
                now: float | None = None) -> dict[str, Any]:
    """Mark open alert `alert_id` (firing or unknown) acknowledged by `actor` (`user@host`), with
    `reason`; returns the alert as stored. From then on its webhook is silenced: no firing
    notification for this alert, also if it reopens within the cooldown, until it resolves; the
    resolved notification is still sent (with the acknowledgement in it), so the receiver knows
    the incident ended. A new incident later is a new alert and notifies as usual.

    NotFound for an unknown id; UsageError for a resolved or an already acknowledged alert. The
    model's history records it through `Monitor.acknowledge` (the registry knows the actor)."""
    now = time.time() if now is None else now
    if not actor or len(actor) > 255:
        raise UsageError(f"the acknowledging actor must be 1..255 characters, got {actor!r}")
    a = alerts
    with engine.begin() as conn:
        row = conn.execute(sa.select(a).where(a.c.id == alert_id).with_for_update()).mappings().first()
        if row is None:
            raise NotFound(f"no alert {alert_id} (`shipyard monitor status NAME` lists the open alerts)")
        what = f"alert {alert_id} ({row['rule']} on {row['model']}" + \
            (f" v{row['version']})" if row["version"] is not None else ")")
        if row["status"] not in OPEN:
            raise UsageError(f"{what} is {row['status']} since {_iso(row['resolved_at'])}: only an open "
                             "(firing or unknown) alert can be acknowledged")
        if row["acknowledged_at"] is not None:
            why = f": {row['ack_reason']}" if row["ack_reason"] else ""
            raise UsageError(f"{what} was already acknowledged by {row['acknowledged_by']} at "
                             f"{_iso(row['acknowledged_at'])}{why}")
        ack = {"acknowledged_at": now, "acknowledged_by": actor, "ack_reason": reason or None}
        conn.execute(a.update().where(a.c.id == alert_id).values(**ack))
    log.warning("acknowledged: alert %s by %s%s", what, actor, f" ({reason})" if reason else "")
    return {**dict(row), **ack}


def _iso(ts: float | None) -> str:
    return "?" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- readers: `monitor status`, `monitor trace` ----------------------------------------------------
def recent(engine: sa.Engine, name: str, *, include_resolved: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Open alerts of `name` (firing, or unknown: their rule cannot decide now), newest first;
    each with its acknowledgement (`acknowledged_at`, `acknowledged_by`, `ack_reason`; None if none)."""
    q = sa.select(alerts).where(alerts.c.model == name)
    if not include_resolved:
        q = q.where(alerts.c.status.in_(OPEN))
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(alerts.c.opened_at.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def open_at(engine: sa.Engine, name: str, version: int, ts: float, *, window_id: int | None = None
            ) -> list[dict[str, Any]]:
    """The alerts of `name` (of the model, or of this version) that were open at `ts`, plus the
    drift alerts that window `window_id` took part in, oldest first."""
    with engine.connect() as conn:
        candidates = conn.execute(sa.select(alerts).where(
            alerts.c.model == name, sa.or_(alerts.c.version.is_(None), alerts.c.version == version),
            sa.or_(alerts.c.resolved_at.is_(None), alerts.c.resolved_at >= ts))
            .order_by(alerts.c.opened_at)).mappings().all()
    return [dict(a) for a in candidates if a["opened_at"] <= ts or (
        window_id is not None and window_id in (a["details"] or {}).get("windows", []))]
