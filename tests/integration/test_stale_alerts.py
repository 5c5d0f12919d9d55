"""Alerts that outlive what they were about: a version's alert when the version stops receiving
traffic and the evaluator restarts without it (no state covers it: the alert must still resolve),
and an accuracy alert on an estimate that turns unbelievable (it shows as `unknown`, stays listed,
and autopilot does not retrain on it). Real evaluator, prediction log, database and webhook."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.bundles import traffic_data
from shipyard.monitor import alert_rules
from shipyard.monitor.api import Monitor
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.windows import status
from shipyard.update.autopilot import Autopilot, Policy

from ..monitoring import deploy, log_images
from ..webhook import Receiver

CONFIG = MonitorConfig(window=100, min_window=30, max_age_s=60, draws=500, accuracy_every_s=0)
# the tiny test model is right on about 8% of digits: an estimate under 99% fires while it is believed
ACCURACY = '[[rule]]\nname = "acc"\nkind = "accuracy"\nsource = "estimated"\nbelow = 0.99\n'
DRIFT = '[[rule]]\nname = "drift"\nkind = "drift"\n'  # the sequential rule: one alarming window alerts


def rules(*text: str, url: str | None = None) -> alert_rules.AlertConfig:
    hook = f'[webhook]\nurl = "{url}"\nretries = 1\ntimeout_s = 2\n' if url else ""
    return alert_rules.parse(tomllib.loads(hook + "".join(text)))


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def test_an_alert_of_a_version_without_traffic_resolves_when_a_restarted_evaluator_never_saw_it(
        tmp_path: Path, receiver: Receiver) -> None:
    reg, rt, log = deploy(tmp_path)
    images, _ = traffic_data()
    first = Evaluator(reg, lambda: ["digits"], CONFIG, holder="first", alerts=rules(DRIFT, url=receiver.url))
    log_images(log, rt, 255 - images[:100], "inverted")
    first.tick()
    [alert] = Monitor(reg).alerts("digits")
    assert (alert["rule"], alert["version"], alert["status"]) == ("drift", 1, "firing")
    first.stop()  # the server stops (its lease is given back)

    # v1 loses its alias and gets no more traffic; the new evaluator starts after the rows it read
    reg.unalias("digits", "production", reason="stale alert test")
    second = Evaluator(reg, lambda: ["digits"], CONFIG, holder="second", alerts=rules(DRIFT, url=receiver.url))
    assert second.tick()["digits"] == {}  # no state covers v1: only the open alert remembers it
    second.stop()
    assert Monitor(reg).alerts("digits") == []
    [done] = Monitor(reg).alerts("digits", include_resolved=True)
    assert done["id"] == alert["id"] and done["status"] == "resolved" and done["resolved_at"] is not None
    notes = receiver.wait(2)
    assert [n["status"] for n in notes] == ["firing", "resolved"]
    assert notes[1]["alert"]["version"] == 1 and notes[1]["alert"]["resolution"] == "v1 no longer receives traffic"


def test_an_accuracy_alert_turns_unknown_when_the_estimate_cannot_be_believed_and_autopilot_waits(
        tmp_path: Path) -> None:
    reg, rt, log = deploy(tmp_path)
    images, _ = traffic_data()
    ev = Evaluator(reg, lambda: ["digits"], CONFIG, alerts=rules(ACCURACY))
    pilot = Autopilot(reg, "digits", Policy(alerts=("accuracy",), min_labels=200), log=lambda m: None)
    mon = Monitor(reg)

    log_images(log, rt, images[:100], "calm")
    ev.tick()
    [alert] = mon.alerts("digits")
    assert (alert["rule"], alert["status"]) == ("acc", "firing")
    assert "only 0 labelled production samples" in pilot.decide().reason  # a firing alert is a trigger

    log_images(log, rt, 255 - images[100:200], "inverted")
    ev.tick()
    acc = status(reg.engine, "digits")[1]["accuracy"]
    assert acc["estimated_reliable"] is False and acc["estimated_reason"], acc
    [unknown] = mon.alerts("digits")  # still open, still listed
    assert unknown["id"] == alert["id"] and unknown["status"] == "unknown" and unknown["resolved_at"] is None
    assert "cannot be believed" in unknown["message"]
    assert status(reg.engine, "digits")[1]["rules"]["acc"]["state"] == "unknown"
    d = pilot.decide()
    assert d.action == "wait" and "open but unknown" in d.reason and "only 0 labelled" not in d.reason, d

    log_images(log, rt, images[200:300], "calm-again")  # believed again: the same incident fires again
    ev.tick()
    ev.stop()
    [again] = mon.alerts("digits")
    assert again["id"] == alert["id"] and again["status"] == "firing"
    assert "only 0 labelled production samples" in pilot.decide().reason
