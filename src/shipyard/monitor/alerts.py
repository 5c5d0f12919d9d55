"""Alert rules: a TOML file of conditions over the persisted monitoring state, checked by the
evaluator that holds the model's lease (so several workers or replicas raise one alert, not
one each). An alert is stored, logged and POSTed to a webhook; it stays one alert while its
condition holds, resolves when it clears, and reopens (without a second notification) if the
condition returns within the cooldown: one incident, one alert.

The file's keys are in `shipyard monitor rules --example`. Drift rules follow a calibrated CUSUM
over the windows' evidence unless they give `windows = N` (N consecutive alarming windows); an
accuracy rule on an estimate that cannot be believed is `unknown` (neither firing nor ok: an
alert it had open shows as unknown, and autopilot, which acts on firing alerts, waits); the
`labels` kind asks for labels while that lasts.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard import _toml
from shipyard.errors import ConfigError
from shipyard.monitor import drift, feedback, stats
from shipyard.store.schema import alerts, monitor_windows

log = logging.getLogger("shipyard.monitor")

KINDS = ("drift", "accuracy", "labels", "error_rate", "latency_p99", "rejections")
PER_VERSION = ("drift", "accuracy", "labels")
SEVERITIES = ("info", "warning", "critical")
TESTS = ("input", "mean", "prediction", "confidence", "softmax")


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str = "warning"
    models: tuple[str, ...] = ("*",)  # glob patterns
    tests: tuple[str, ...] = TESTS  # drift
    windows: int | None = None  # drift: N consecutive alarming windows; None: the sequential rule
    source: str = "estimated"  # accuracy
    below: float | None = None  # accuracy: absolute
    below_validation_by: float | None = None  # accuracy: this far under the bundle's validation accuracy
    last: int = 500  # accuracy (realised): over the newest N labels …
    min_labels: int = 50  # … once there are at least this many
    above: float | None = None  # error_rate, rejections: a share of requests
    above_ms: float | None = None  # latency_p99
    over_s: float = 60.0  # error_rate, latency_p99, rejections: the time range looked at
    min_requests: int = 20  # … with at least this many requests in it

    def applies_to(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def describe(self) -> str:
        if self.kind == "drift":
            if self.windows is None:
                return f"drift ({'/'.join(self.tests)}): an alarming window, or near misses adding up (CUSUM)"
            return f"drift alarm ({'/'.join(self.tests)}) in {self.windows} consecutive window(s)"
        if self.kind == "labels":
            return f"the accuracy estimate cannot be believed and fewer than {self.min_labels} labels have arrived"
        if self.kind == "accuracy":
            bound = f"{self.below:.1%}" if self.below is not None else \
                f"validation − {self.below_validation_by:.1%}"
            return f"{self.source} accuracy below {bound}"
        if self.kind == "latency_p99":
            return f"p99 latency above {self.above_ms:g} ms over {self.over_s:g} s"
        what = "server errors" if self.kind == "error_rate" else "rejected inputs"
        return f"{what} above {self.above:.1%} of requests over {self.over_s:g} s"


@dataclass(frozen=True)
class Webhook:
    url: str
    timeout_s: float = 2.0
    retries: int = 3
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertConfig:
    rules: tuple[Rule, ...]
    webhook: Webhook | None = None
    cooldown_s: float = 600.0


DEFAULT_RULES = AlertConfig(rules=(
    Rule("drift", "drift"),
    Rule("accuracy-drop", "accuracy", source="estimated", below_validation_by=0.10),
    Rule("labels-needed", "labels", severity="info"),
    Rule("server-errors", "error_rate", severity="critical", above=0.05),
))


# -- the file ------------------------------------------------------------------------------------
_COMMON, _SERVING = ("name", "kind", "severity", "models"), ("over_s", "min_requests")
#: the keys each kind reads: a key of another kind is refused, not silently ignored
_RULE_KEYS = {"drift": (*_COMMON, "tests", "windows"),
              "accuracy": (*_COMMON, "source", "below", "below_validation_by", "last", "min_labels"),
              "labels": (*_COMMON, "last", "min_labels"), "error_rate": (*_COMMON, "above", *_SERVING),
              "rejections": (*_COMMON, "above", *_SERVING), "latency_p99": (*_COMMON, "above_ms", *_SERVING)}


def load(path: str | Path) -> AlertConfig:
    """Read and check an alert rules file; every problem names its key and value."""
    doc = _toml.read(path, "alerts")
    return parse(doc)


def _num(key: str, value: Any, *, lo: float | None = None, hi: float | None = None, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(key, value, "must be an integer" if integer else "must be a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-∞'}..{hi if hi is not None else '∞'}"
        raise ConfigError(key, value, f"must be in {rng}")
    return value


def parse(doc: dict[str, Any]) -> AlertConfig:
    unknown = set(doc) - {"webhook", "defaults", "rule"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(key, doc[key], "unknown section (expected [webhook], [defaults] and [[rule]])")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("defaults", defaults, "must be a table")
    for k in defaults:
        if k not in ("cooldown_s", "severity"):
            raise ConfigError(f"defaults.{k}", defaults[k], "unknown key (expected cooldown_s, severity)")
    cooldown = float(_num("defaults.cooldown_s", defaults.get("cooldown_s", 600.0), lo=0))
    severity = defaults.get("severity", "warning")
    if severity not in SEVERITIES:
        raise ConfigError("defaults.severity", severity, f"must be one of {', '.join(SEVERITIES)}")
    webhook = None
    if "webhook" in doc:
        w = doc["webhook"]
        if not isinstance(w, dict) or not isinstance(w.get("url"), str) or \
                not w["url"].startswith(("http://", "https://")):
            raise ConfigError("webhook.url", w.get("url") if isinstance(w, dict) else w, "must be an http(s) URL")
        for k in w:
            if k not in ("url", "timeout_s", "retries", "headers"):
                raise ConfigError(f"webhook.{k}", w[k], "unknown key (expected url, timeout_s, retries, headers)")
        headers = w.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError("webhook.headers", headers, "must be a table of strings")
        webhook = Webhook(w["url"], float(_num("webhook.timeout_s", w.get("timeout_s", 2.0), lo=0.1, hi=60)),
                          int(_num("webhook.retries", w.get("retries", 3), lo=0, hi=10, integer=True)), headers)
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError("rule", raw_rules, "give at least one [[rule]]")
    rules, names = [], set()
    for i, r in enumerate(raw_rules):
        rules.append(_rule(i, r, severity))
        if rules[-1].name in names:
            raise ConfigError(f"rule[{i}].name", rules[-1].name, "two rules have this name")
        names.add(rules[-1].name)
    return AlertConfig(tuple(rules), webhook, cooldown)


def _rule(i: int, r: Any, severity: str) -> Rule:
    at = f"rule[{i}]"
    if not isinstance(r, dict):
        raise ConfigError(at, r, "must be a table")
    kind = r.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{at}.kind", kind, f"must be one of {', '.join(KINDS)}")
    for k in r:
        if k not in _RULE_KEYS[kind]:
            why = "unknown key" if all(k not in keys for keys in _RULE_KEYS.values()) else f"not a key of a {kind} rule"
            raise ConfigError(f"{at}.{k}", r[k], f"{why} (expected {', '.join(_RULE_KEYS[kind])})")
    args: dict[str, Any] = {"name": r.get("name", kind), "kind": kind, "severity": r.get("severity", severity)}
    if not isinstance(args["name"], str) or not args["name"]:
        raise ConfigError(f"{at}.name", args["name"], "must be a non-empty string")
    if args["severity"] not in SEVERITIES:
        raise ConfigError(f"{at}.severity", args["severity"], f"must be one of {', '.join(SEVERITIES)}")
    if "models" in r:
        if not isinstance(r["models"], list) or not r["models"] or not all(isinstance(m, str) for m in r["models"]):
            raise ConfigError(f"{at}.models", r["models"], "must be a list of model names or patterns")
        args["models"] = tuple(r["models"])
    if kind == "drift":
        tests = r.get("tests", list(TESTS))
        if not isinstance(tests, list) or not tests or any(t not in TESTS for t in tests):
            raise ConfigError(f"{at}.tests", tests, f"must be a list drawn from {', '.join(TESTS)}")
        args["tests"] = tuple(tests)
        if "windows" in r:
            args["windows"] = _num(f"{at}.windows", r["windows"], lo=1, hi=100, integer=True)
    elif kind == "labels":
        args["last"] = _num(f"{at}.last", r.get("last", 500), lo=1, integer=True)
        args["min_labels"] = _num(f"{at}.min_labels", r.get("min_labels", 50), lo=1, integer=True)
    elif kind == "accuracy":
        source = r.get("source", "estimated")
        if source not in ("estimated", "realised"):
            raise ConfigError(f"{at}.source", source, "must be estimated or realised")
        args["source"] = source
        if ("below" in r) == ("below_validation_by" in r):
            raise ConfigError(f"{at}.below", r.get("below"), "give exactly one of below and below_validation_by")
        if "below" in r:
            args["below"] = float(_num(f"{at}.below", r["below"], lo=0, hi=1))
        else:
            args["below_validation_by"] = float(_num(f"{at}.below_validation_by", r["below_validation_by"], lo=0, hi=1))
        args["last"] = _num(f"{at}.last", r.get("last", 500), lo=1, integer=True)
        args["min_labels"] = _num(f"{at}.min_labels", r.get("min_labels", 50), lo=1, integer=True)
    else:
        if kind == "latency_p99":
            if "above_ms" not in r:
                raise ConfigError(f"{at}.above_ms", None, "latency_p99 needs above_ms")
            args["above_ms"] = float(_num(f"{at}.above_ms", r["above_ms"], lo=0))
        else:
            if "above" not in r:
                raise ConfigError(f"{at}.above", None, f"{kind} needs above (a share of requests, 0..1)")
            args["above"] = float(_num(f"{at}.above", r["above"], lo=0, hi=1))
        args["over_s"] = float(_num(f"{at}.over_s", r.get("over_s", 60.0), lo=1))
        args["min_requests"] = _num(f"{at}.min_requests", r.get("min_requests", 20), lo=1, integer=True)
    return Rule(**args)


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
        """Open, refresh, reopen or resolve alerts; returns the notifications due."""
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

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# -- readers: `monitor status`, `monitor trace` ----------------------------------------------------
def recent(engine: sa.Engine, name: str, *, include_resolved: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Open alerts of `name` (firing, or unknown: their rule cannot decide now), newest first."""
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
