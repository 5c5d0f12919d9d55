"""Autopilot: from a drift alert to a promoted retrained version with nobody at the keyboard, within
its policy (trigger, labels needed, cooldown, daily budget), every decision explained."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.data.sources import mnist_sample
from shipyard.errors import ConfigError
from shipyard.monitor import alert_rules, alerts
from shipyard.monitor.api import Monitor
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.update.autopilot import Autopilot, Policy, parse_policy

from ..conftest import run_cli, stream_cli
from ..serving import serve, server_env
from .test_retrain import _log_labelled
from .test_update import Users, _wait

if TYPE_CHECKING:
    from ..conftest import Champion

POLICY = """
[trigger]
alerts = ["drift"]
min_labels = 200
[limits]
cooldown_s = 3600
max_retrains_per_day = 2
[retrain]
epochs = 3
[rollout]
steps = [50, 100]
min_requests = 60
min_labels = 30
step_timeout_s = 180
"""


@pytest.fixture
def deployed(champion: Champion, tmp_path: Path) -> tuple[Settings, Registry, Path]:
    settings, reg = champion
    (tmp_path / "policy.toml").write_text(POLICY)
    return settings, reg, tmp_path / "policy.toml"


@pytest.mark.parametrize(("doc", "key"), [
    ({"trigger": {"alerts": ["vibes"]}}, "trigger.alerts"),
    ({"trigger": {"min_labels": 0}}, "trigger.min_labels"),
    ({"limits": {"cooldown": 5}}, "limits.cooldown"),
    ({"rollout": {"steps": [10, 50]}}, "rollout"),
    ({"retrain": {"holdout": 1.5}}, "retrain.holdout"),
    ({"autopilot": {}}, "autopilot"),
])
def test_a_bad_policy_is_refused_naming_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_policy(doc)
    assert e.value.key == key


def test_every_decision_says_why_and_dry_run_changes_nothing(deployed: tuple[Settings, Registry, Path]) -> None:
    settings, reg, policy = deployed
    pilot = Autopilot(reg, "digits", Policy(alerts=("drift",), min_labels=200), log=lambda m: None)
    assert pilot.decide().reason == "no open drift alert on v1"
    alerter = alerts.Alerter(reg.engine, alert_rules.DEFAULT_RULES)
    drift_rule = alert_rules.DEFAULT_RULES.rules[0]
    alerter.apply("digits", [alerts.Finding(drift_rule, 1, True, "input drift", {})], time.time())
    assert "only 0 labelled production samples" in pilot.decide().reason
    ds = mnist_sample()
    _log_labelled(reg, 255 - ds.x[:250], ds.y[:250], "inv")
    env = server_env(settings.home)
    out = json.loads(run_cli(["autopilot", "digits", "--policy", str(policy), "--dry-run", "--once", "--json"],
                             env).stdout)
    assert out["action"] == "retrain" and out["dry_run"] and "250 labelled" in out["reason"]
    assert [m.version for m in reg.list()[0].versions] == [1]  # nothing was made
    reg.record("digits", "autopilot", reason="test", details={"action": "retrain"})
    assert "cooldown" in pilot.decide().reason
    busy = Autopilot(reg, "digits", Policy(alerts=("drift",), min_labels=200, cooldown_s=0, max_retrains_per_day=1),
                     log=lambda m: None)
    assert "reached the limit (1)" in busy.decide().reason
    bad = run_cli(["autopilot", "digits", "--policy", str(policy.with_name("missing.toml"))], env, check=False)
    assert bad.returncode == 2 and "missing.toml" in bad.stderr


def test_autopilot_json_prints_one_line_per_decision_while_it_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(settings=Settings(home=home)).register(make_bundle(tmp_path / "a", name="m"), "m", alias="production")
    (tmp_path / "fast.toml").write_text("poll_s = 0.1\n")
    lines, rc, err = stream_cli(["autopilot", "m", "--policy", str(tmp_path / "fast.toml"), "--json"],
                                server_env(home), lines=3)
    decisions = [json.loads(line) for line in lines]  # JSON Lines without --once: one object per decision
    assert [(d["name"], d["action"]) for d in decisions] == [("m", "wait")] * 3, err
    assert decisions[0]["reason"] == "no open drift, accuracy or mae alert on v1" and not decisions[0]["dry_run"]
    assert rc == 0 and "stopped" in err


def test_autopilot_turns_a_drift_alert_into_a_promoted_version(deployed: tuple[Settings, Registry, Path]) -> None:
    settings, reg, policy = deployed
    ds = mnist_sample()
    env = server_env(settings.home)
    with serve(settings.home, "digits", "--window", "100", "--poll-s", "0.5", env=env) as srv, \
            Users(srv.base, ds.x, ds.y) as users:
        users.shift = lambda x: 255 - x
        mon = Monitor(reg)
        _wait("a drift alert", lambda: any(a["kind"] == "drift" for a in mon.alerts("digits")))
        # as many labels as the end-to-end update test: a retrain on fewer barely learns the shift
        _wait("700 labelled answers", lambda: users.sent >= 700)
        r = run_cli(["autopilot", "digits", "--policy", str(policy), "--once", "--json"], env, timeout=600)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["action"] == "promoted", (out, r.stderr[-2000:])
        assert reg.get("digits@production").version == 2
        again = json.loads(run_cli(["autopilot", "digits", "--policy", str(policy), "--once", "--json"], env).stdout)
        assert again["action"] == "wait"  # the alert was on v1; v2 is calm or the cooldown holds
    assert users.failed == 0, users.errors[:5]
    notes = [(e.details or {}).get("action") for e in reg.history("digits") if e.kind == "autopilot"]
    assert notes[:3] == ["retrain", "retrained", "promoted"]
    assert np.all([e.reason for e in reg.history("digits") if e.kind == "autopilot"])
