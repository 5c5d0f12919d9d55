"""`shipyard autopilot NAME --policy FILE`: close the loop without a person. It watches the model's
alerts; when a drift, accuracy or (a regression's) mae alert is firing (not unknown) and enough
labelled production data has come back, it runs retrain → offline gate → rollout, within a
cooldown and a daily budget of retrains. Every decision is logged with its reason (and recorded
in `models history` when it changes); `--dry-run` says what it would do and does nothing.

    [trigger]
    alerts = ["drift", "accuracy", "mae"]   # alert kinds that start a retrain (mae: a regression's)
    min_labels = 200                 # labelled production samples (with kept inputs) needed

    [limits]
    cooldown_s = 3600                # after a retrain, wait this long before another
    max_retrains_per_day = 3

    [retrain]
    epochs = 3
    holdout = 0.2
    tolerance = 0.01

    [rollout]
    steps = [10, 50, 100]
    min_requests = 200
    min_labels = 100
    step_timeout_s = 600
    gates = ["error_rate", "p99", "accuracy", "agreement"]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard import _toml
from shipyard.errors import ConfigError
from shipyard.store import leases
from shipyard.update import rollout as ro

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.settings import Settings

ALERT_KINDS = ("drift", "accuracy", "mae", "error_rate", "latency_p99", "rejections")


@dataclass(frozen=True)
class Policy:
    alerts: tuple[str, ...] = ("drift", "accuracy", "mae")
    min_labels: int = 200
    cooldown_s: float = 3600.0
    max_retrains_per_day: int = 3
    retrain: dict[str, Any] = field(default_factory=lambda: {"epochs": 3, "holdout": 0.2, "tolerance": 0.01})
    rollout: ro.RolloutConfig = field(default_factory=ro.RolloutConfig)
    poll_s: float = 10.0


def load_policy(path: str | Path) -> Policy:
    doc = _toml.read(path, "policy")
    return parse_policy(doc)


def _section(doc: dict[str, Any], name: str, keys: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(name, sec, "must be a table")
    for k, v in sec.items():
        if k not in keys:
            raise ConfigError(f"{name}.{k}", v, f"unknown key (expected {', '.join(keys)})")
        if isinstance(v, bool) or not isinstance(v, keys[k]):
            raise ConfigError(f"{name}.{k}", v, f"must be {getattr(keys[k], '__name__', 'a number')}")
    return sec


def parse_policy(doc: dict[str, Any]) -> Policy:
    if unknown := set(doc) - {"trigger", "limits", "retrain", "rollout", "poll_s"}:
        key = sorted(unknown)[0]
        raise ConfigError(key, doc[key], "unknown section (expected [trigger], [limits], [retrain], [rollout])")
    num = (int, float)
    trig = _section(doc, "trigger", {"alerts": list, "min_labels": int})
    lim = _section(doc, "limits", {"cooldown_s": num, "max_retrains_per_day": int})
    ret = _section(doc, "retrain", {"epochs": int, "holdout": num, "tolerance": num, "lr": num})
    rol = _section(doc, "rollout", {"steps": list, "min_requests": int, "min_labels": int, "step_timeout_s": num,
                                    "gates": list})
    alerts = tuple(trig.get("alerts", ["drift", "accuracy", "mae"]))
    if not alerts or any(a not in ALERT_KINDS for a in alerts):
        raise ConfigError("trigger.alerts", list(alerts), f"must be a list drawn from {', '.join(ALERT_KINDS)}")
    for key, value, lo in (("trigger.min_labels", trig.get("min_labels", 200), 1),
                           ("limits.max_retrains_per_day", lim.get("max_retrains_per_day", 3), 0),
                           ("limits.cooldown_s", lim.get("cooldown_s", 3600), 0),
                           ("retrain.epochs", ret.get("epochs", 3), 1)):
        if value < lo:
            raise ConfigError(key, value, f"must be at least {lo}")
    if not 0 < ret.get("holdout", 0.2) < 1:
        raise ConfigError("retrain.holdout", ret["holdout"], "must be in (0, 1)")
    try:
        config = ro.RolloutConfig(
            steps=tuple(rol.get("steps", [10, 50, 100])), min_requests=rol.get("min_requests", 200),
            min_labels=rol.get("min_labels", 100), step_timeout_s=float(rol.get("step_timeout_s", 600)),
            gates=tuple(rol.get("gates", list(ro.GATES)))).check()
    except Exception as e:  # noqa: BLE001 - name the section
        raise ConfigError("rollout", rol, str(e)) from None
    poll = doc.get("poll_s", 10.0)
    if isinstance(poll, bool) or not isinstance(poll, num) or poll <= 0:
        raise ConfigError("poll_s", poll, "must be a positive number")
    return Policy(alerts, int(trig.get("min_labels", 200)), float(lim.get("cooldown_s", 3600)),
                  int(lim.get("max_retrains_per_day", 3)),
                  {"epochs": 3, "holdout": 0.2, "tolerance": 0.01, **ret}, config, float(poll))


@dataclass(frozen=True)
class Decision:
    action: str  # wait | retrain
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Autopilot:
    def __init__(self, registry: Registry, name: str, policy: Policy, *, settings: Settings | None = None,
                 dry_run: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.reg = registry
        self.name = name
        self.policy = policy
        self.settings = settings
        self.dry_run = dry_run
        self.log = log
        self.holder = leases.new_holder("autopilot")
        self._last: tuple[str, str] | None = None

    def _retrains(self) -> list[float]:
        return [e.at.timestamp() for e in self.reg.history(self.name)
                if e.kind == "autopilot" and (e.details or {}).get("action") == "retrain"]

    def decide(self, now: float | None = None) -> Decision:
        """What to do now, and why (reads only)."""
        from shipyard.monitor.api import Monitor
        from shipyard.update.data import labelled

        now = time.time() if now is None else now
        p = self.policy
        holder = leases.current(self.reg.engine, f"update:{self.name}")
        if holder is not None and holder.holder != self.holder:
            return Decision("wait", f"a rollout or another autopilot holds {self.name} ({holder.holder})")
        st = ro.status(self.reg.engine, self.name)
        if st is not None and st["status"] == "running":
            return Decision("wait", f"a rollout of v{st['candidate']} is under way")
        production = self.reg.get(f"{self.name}@production").version
        mine = [a for a in Monitor(self.reg).alerts(self.name)
                if a["kind"] in p.alerts and a["version"] in (None, production)]
        # only a firing alert triggers: an 'unknown' one is open, but its rule cannot decide now
        # (an accuracy estimate that cannot be believed), so it is no evidence to retrain on
        open_alerts = [a for a in mine if a["status"] == "firing"]
        if not open_alerts:
            undecided = [a for a in mine if a["status"] == "unknown"]
            if undecided:
                # the message after the comma: `_note` records a decision once per text before it
                return Decision("wait", f"alert {undecided[0]['rule']!r} on v{production} is open but unknown, "
                                        f"its rule cannot decide now: {undecided[0]['message']}")
            kinds = ", ".join(p.alerts[:-1]) + " or " + p.alerts[-1] if len(p.alerts) > 1 else p.alerts[0]
            return Decision("wait", f"no open {kinds} alert on v{production}")
        trigger = open_alerts[0]
        done = self._retrains()
        if done and now - done[-1] < p.cooldown_s:
            return Decision("wait", f"alert {trigger['rule']!r} is open, but the last retrain was "
                                    f"{now - done[-1]:.0f} s ago (cooldown {p.cooldown_s:g} s)")
        today = [t for t in done if now - t < 86400]
        if len(today) >= p.max_retrains_per_day:
            return Decision("wait", f"alert {trigger['rule']!r} is open, but {len(today)} retrains in the last 24 h "
                                    f"reached the limit ({p.max_retrains_per_day})")
        champ = self.reg.load(f"{self.name}@production")
        n = len(labelled(self.reg.engine, self.name, champ.preprocess, regression=champ.regression)) \
            if champ.preprocess else 0
        if n < p.min_labels:
            return Decision("wait", f"alert {trigger['rule']!r} is open, but only {n} labelled production samples "
                                    f"have come back (need {p.min_labels})")
        return Decision("retrain", f"alert {trigger['rule']!r} ({trigger['message']}) is open and {n} labelled "
                                   "production samples are in", {"alert": trigger["id"], "labels": n})

    def _note(self, d: Decision, **details: Any) -> None:
        self.log(f"autopilot: {'would ' if self.dry_run and d.action != 'wait' else ''}{d.action}: {d.reason}")
        key = (d.action, d.reason.split(",")[0])
        if self.dry_run or key == self._last:
            return
        self._last = key
        self.reg.record(self.name, "autopilot", reason=d.reason, details={"action": d.action, **d.details, **details})

    def step(self) -> Decision:
        """Decide once and act on it."""
        d = self.decide()
        self._note(d)
        if d.action != "retrain" or self.dry_run:
            return d
        if not leases.acquire(self.reg.engine, f"update:{self.name}", self.holder, 3600):
            return Decision("wait", "another process took the model's lease meanwhile")
        try:
            from shipyard.update.retrain import retrain

            p = self.policy
            result = retrain(self.name, registry=self.reg, settings=self.settings, progress=False, **p.retrain)
            gate = result.gate
            self.reg.record(self.name, "autopilot", version=result.version,
                            reason=f"retrained v{result.version}; offline gate "
                                   f"{'passed' if gate['passed'] else 'failed: ' + gate['reason']}",
                            details={"action": "retrained", "version": result.version, "passed": gate["passed"]})
            self.log(f"autopilot: retrained v{result.version}; offline gate {'passed' if gate['passed'] else 'failed'}")
            if not gate["passed"]:
                return Decision("stop", f"the offline gate refused v{result.version}: {gate['reason']}")
            runner = ro.Rollout(self.reg, self.name, p.rollout, log=self.log, holder=self.holder)
            try:
                final = runner.start()
            except ro.RolloutFailed as e:
                self.reg.record(self.name, "autopilot", version=result.version, reason=f"rollout failed: {e}",
                                details={"action": "rolled_back"})
                return Decision("rolled_back", str(e))
            outcome = f"v{result.version} {final['status']}"
            self.reg.record(self.name, "autopilot", version=result.version, reason=outcome,
                            details={"action": final["status"]})
            return Decision(final["status"], outcome)
        finally:
            leases.release(self.reg.engine, f"update:{self.name}", self.holder)

    def run(self, *, once: bool = False, on_decision: Callable[[Decision], None] | None = None) -> Decision:
        """Step every `poll_s` until interrupted (or once), telling `on_decision` of each decision
        as it is made (the CLI's JSON Lines)."""
        while True:
            d = self.step()
            if on_decision is not None:
                on_decision(d)
            if once:
                return d
            time.sleep(self.policy.poll_s)
