"""Alert rules as data: the kinds, their keys, the defaults, and the TOML file read into them with
every problem named by its key and value (`shipyard monitor rules --example` shows one). The
checking is `alerts`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard import _toml
from shipyard.errors import ConfigError

KINDS = ("drift", "accuracy", "mae", "labels", "error_rate", "latency_p99", "rejections")
PER_VERSION = ("drift", "accuracy", "mae", "labels")
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
    above: float | None = None  # error_rate, rejections: a share of requests; mae: in the target's units
    above_validation_by: float | None = None  # mae: this share above the bundle's validation MAE (0.25: 25%)
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
        if self.kind == "mae":
            bound = f"{self.above:g}" if self.above is not None else \
                f"validation MAE + {self.above_validation_by:.0%}"
            return f"realised MAE (a regression's, from labels) above {bound}"
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
    Rule("mae-rise", "mae", above_validation_by=0.25),  # regressions only: other models have no MAE
    Rule("labels-needed", "labels", severity="info"),
    Rule("server-errors", "error_rate", severity="critical", above=0.05),
))


# -- the file ------------------------------------------------------------------------------------
_COMMON, _SERVING = ("name", "kind", "severity", "models"), ("over_s", "min_requests")
#: the keys each kind reads: a key of another kind is refused, not silently ignored
_RULE_KEYS = {"drift": (*_COMMON, "tests", "windows"),
              "accuracy": (*_COMMON, "source", "below", "below_validation_by", "last", "min_labels"),
              "mae": (*_COMMON, "above", "above_validation_by", "last", "min_labels"),
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
    elif kind == "mae":
        if ("above" in r) == ("above_validation_by" in r):
            raise ConfigError(f"{at}.above", r.get("above"), "give exactly one of above (the MAE, in the target's "
                              "units) and above_validation_by (a share of the validation MAE)")
        if "above" in r:
            args["above"] = float(_num(f"{at}.above", r["above"], lo=0))
        else:
            args["above_validation_by"] = float(_num(f"{at}.above_validation_by", r["above_validation_by"], lo=0))
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
