"""Monitoring, step 3: alert rules from TOML, one alert per incident (stored, logged, POSTed to a
webhook once, with a cooldown), serving statistics in the database, `monitor status`, and the
exports for Prometheus (checked by the real `promtool`) and Grafana."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle, traffic_data
from shipyard.errors import ConfigError, NotFound, UsageError
from shipyard.monitor import alert_rules, alerts, exports, stats
from shipyard.monitor.api import Monitor
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.predlog import PredictionLog
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings

from ..conftest import run_cli
from ..serving import serve, server_env
from ..webhook import Receiver


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def _config(url: str, *rules: str, cooldown: float = 600) -> alert_rules.AlertConfig:
    text = f'[webhook]\nurl = "{url}"\nretries = 2\ntimeout_s = 2\n[defaults]\ncooldown_s = {cooldown}\n' + \
        "\n".join(rules)
    return alert_rules.parse(__import__("tomllib").loads(text))


DRIFT = '[[rule]]\nname = "drift"\nkind = "drift"\nwindows = 1\n'


# -- the rules file ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "key", "why"), [
    ('[[rule]]\nkind = "drift"\nwindows = 0\n', "rule[0].windows", "must be in 1..100"),
    ('[[rule]]\nkind = "speed"\n', "rule[0].kind", "must be one of"),
    ('[[rule]]\nkind = "accuracy"\n', "rule[0].below", "exactly one of below and below_validation_by"),
    ('[[rule]]\nkind = "latency_p99"\n', "rule[0].above_ms", "needs above_ms"),
    ('[[rule]]\nkind = "error_rate"\nabove = "lots"\n', "rule[0].above", "must be a number"),
    ('[[rule]]\nkind = "drift"\ntests = ["vibes"]\n', "rule[0].tests", "drawn from input"),
    ('[[rule]]\nkind = "drift"\nwindow = 2\n', "rule[0].window", "unknown key"),
    ('[[rule]]\nkind = "labels"\nbelow = 0.5\n', "rule[0].below", "not a key of a labels rule"),
    ('[[rule]]\nkind = "drift"\nabove_ms = 5\n', "rule[0].above_ms", "not a key of a drift rule"),
    ('[webhook]\nurl = "ftp://x"\n[[rule]]\nkind = "drift"\n', "webhook.url", r"http\(s\) URL"),
    ('[[rule]]\nname = "a"\nkind = "drift"\n[[rule]]\nname = "a"\nkind = "drift"\n', "rule[1].name", "two rules"),
    ('[alerting]\nx = 1\n', "alerting", "unknown section"),
    ("", "rule", "at least one"),
])
def test_a_bad_rules_file_is_refused_naming_the_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why) as e:
        alert_rules.load(path)
    assert e.value.key == key


def test_the_example_rules_check_and_export_to_rules_promtool_accepts(tmp_path: Path, cli_env: dict[str, str]
                                                                      ) -> None:
    example = run_cli(["monitor", "rules", "--example"], cli_env).stdout
    (tmp_path / "rules.toml").write_text(example)
    parsed = json.loads(run_cli(["monitor", "rules", str(tmp_path / "rules.toml"), "--json"], cli_env).stdout)
    assert {r["kind"] for r in parsed["rules"]} == set(alert_rules.KINDS)
    bad = run_cli(["monitor", "rules", str(tmp_path / "missing.toml")], cli_env, check=False)
    assert bad.returncode == 2 and "missing.toml" in bad.stderr
    run_cli(["export", "prometheus-rules", "--alerts", str(tmp_path / "rules.toml"), "-o",
             str(tmp_path / "rules.yml")], cli_env)
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    # every PromQL expression of the Grafana dashboard parses too (as recording rules)
    dash = json.loads(run_cli(["export", "grafana"], cli_env).stdout)
    assert len(dash["panels"]) >= 10 and all(p["targets"] for p in dash["panels"])
    recording = {"groups": [{"name": "dash", "rules": [{"record": f"shipyard:panel{i}", "expr": e}
                                                       for i, e in enumerate(exports.all_exprs())]}]}
    (tmp_path / "dash.yml").write_text(json.dumps(recording))  # JSON is YAML
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "dash.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_export_grafana_json_keeps_the_one_object_on_the_last_line_contract(tmp_path: Path,
                                                                          cli_env: dict[str, str]) -> None:
    pretty = json.loads(run_cli(["export", "grafana"], cli_env).stdout)  # without --json: the file, indented
    one = run_cli(["export", "grafana", "--json"], cli_env).stdout
    assert len(one.splitlines()) == 1 and json.loads(one) == pretty  # --json: the dashboard on one line
    summary = run_cli(["export", "grafana", "-o", str(tmp_path / "dash.json"), "--json"], cli_env).stdout
    assert len(summary.splitlines()) == 1 and json.loads(summary)["path"] == str((tmp_path / "dash.json").resolve())
    assert json.loads((tmp_path / "dash.json").read_text()) == pretty
    # the YAML exports too: with --json and no file, the text travels inside the one object
    yaml_text = run_cli(["export", "prometheus-rules"], cli_env).stdout
    rules = run_cli(["export", "prometheus-rules", "--json"], cli_env).stdout
    assert len(rules.splitlines()) == 1 and json.loads(rules)["content"] == yaml_text


# -- one incident, one alert -------------------------------------------------------------------------
def test_one_incident_is_one_alert_and_one_notification(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    config = _config(receiver.url, DRIFT, cooldown=60)
    alerter = alerts.Alerter(reg.engine, config)
    rule = config.rules[0]

    def finding(firing: bool) -> list[alerts.Finding]:
        return [alerts.Finding(rule, 1, firing, "input drift" if firing else "calm", {})]

    alerter.apply("digits", finding(True), now=1000.0)
    alerter.apply("digits", finding(True), now=1005.0)  # still the same incident
    got = receiver.wait(1)
    assert got[0]["status"] == "firing" and got[0]["alert"]["rule"] == "drift" and got[0]["alert"]["version"] == 1
    mon = Monitor(reg)
    [open_] = mon.alerts("digits")
    assert open_["last_seen_at"] == 1005.0 and open_["status"] == "firing"
    alerter.apply("digits", finding(False), now=1010.0)
    assert receiver.wait(2)[1]["status"] == "resolved" and mon.alerts("digits") == []
    alerter.apply("digits", finding(True), now=1030.0)  # back within the cooldown: the same alert reopens
    assert len(mon.alerts("digits", include_resolved=True)) == 1 and mon.alerts("digits")[0]["status"] == "firing"
    alerter.apply("digits", finding(False), now=1040.0)
    alerter.apply("digits", finding(True), now=1200.0)  # after the cooldown: a new incident
    alerter.close()
    assert len(mon.alerts("digits", include_resolved=True)) == 2
    assert [r["status"] for r in receiver.received] == ["firing", "resolved", "resolved", "firing"]
    assert mon.alerts("digits")[0]["notified"] == "sent"


def test_a_failing_webhook_is_retried_and_the_outcome_recorded(tmp_path: Path) -> None:
    flaky = Receiver(fail_first=2)
    try:
        reg = Registry(settings=Settings(home=tmp_path / "home"))
        alerter = alerts.Alerter(reg.engine, _config(flaky.url, DRIFT))
        alerter.apply("digits", [alerts.Finding(alerter.config.rules[0], 1, True, "drift", {})], now=10.0)
        alerter.close()
        assert len(flaky.received) == 1  # the third attempt got through
        assert Monitor(reg).alerts("digits")[0]["notified"] == "sent"
        dead = alerts.Alerter(reg.engine, _config("http://127.0.0.1:9/nothing-listens", DRIFT))
        dead.apply("other", [alerts.Finding(dead.config.rules[0], 1, True, "drift", {})], now=10.0)
        dead.close()
        assert Monitor(reg).alerts("other")[0]["notified"] == "failed"
    finally:
        flaky.close()


# -- acknowledging ------------------------------------------------------------------------------------
def test_an_acknowledged_alert_is_silent_until_it_resolves_and_its_history_says_who(
        tmp_path: Path, receiver: Receiver, cli_env: dict[str, str]) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))  # the home cli_env names
    reg.register(make_bundle(tmp_path / "b"), "digits")
    config = _config(receiver.url, DRIFT, cooldown=60)
    alerter = alerts.Alerter(reg.engine, config)

    def finding(firing: bool, unknown: bool = False) -> list[alerts.Finding]:
        return [alerts.Finding(config.rules[0], 1, firing, "input drift" if firing else "calm", {}, unknown=unknown)]

    alerter.apply("digits", finding(True), now=1000.0)
    assert receiver.wait(1)[0]["status"] == "firing"
    [open_] = Monitor(reg).alerts("digits")
    assert open_["acknowledged_at"] is None
    p = run_cli(["monitor", "ack", str(open_["id"]), "--reason", "rolling back v1", "--json"], cli_env)
    acked = json.loads(p.stdout.splitlines()[-1])["alert"]
    assert acked["id"] == open_["id"] and acked["ack_reason"] == "rolling back v1" and acked["acknowledged_by"]
    assert f"alert {open_['id']} (drift on digits): acknowledged by {acked['acknowledged_by']}" in p.stderr
    status = json.loads(run_cli(["monitor", "status", "digits", "--json"], cli_env).stdout)
    assert [(a["id"], a["acknowledged_by"], a["ack_reason"]) for a in status["alerts"]] == [
        (open_["id"], acked["acknowledged_by"], "rolling back v1")]
    assert "acknowledged by" in run_cli(["monitor", "status", "digits"], cli_env).stdout

    alerter.apply("digits", finding(True), now=1005.0)  # still firing
    alerter.apply("digits", finding(False, unknown=True), now=1010.0)  # cannot decide
    alerter.apply("digits", finding(True), now=1015.0)  # decided again: the same incident
    alerter.apply("digits", finding(False), now=1020.0)  # resolved: that is still sent
    alerter.apply("digits", finding(True), now=1030.0)  # back within the cooldown: reopens, still acknowledged
    [reopened] = Monitor(reg).alerts("digits")
    assert reopened["id"] == open_["id"] and reopened["ack_reason"] == "rolling back v1"
    alerter.apply("digits", finding(False), now=1040.0)
    alerter.apply("digits", finding(True), now=1200.0)  # after the cooldown: a new incident notifies again
    alerter.close()
    assert [(r["status"], r["alert"]["id"]) for r in receiver.received] == [
        ("firing", open_["id"]), ("resolved", open_["id"]), ("resolved", open_["id"]), ("firing", open_["id"] + 1)]
    resolved = receiver.received[1]["alert"]
    assert resolved["acknowledged_by"] == acked["acknowledged_by"] and resolved["ack_reason"] == "rolling back v1"
    [new] = Monitor(reg).alerts("digits")
    assert new["id"] == open_["id"] + 1 and new["acknowledged_at"] is None and new["notified"] == "sent"

    history = json.loads(run_cli(["models", "history", "digits", "--json"], cli_env).stdout)["events"]
    [ack] = [e for e in history if e["kind"] == "ack"]
    assert ack["actor"] == acked["acknowledged_by"] and ack["reason"] == "rolling back v1" and ack["version"] == 1
    assert ack["details"] == {"alert_id": open_["id"], "rule": "drift"}
    table = run_cli(["models", "history", "digits"], cli_env).stdout
    assert "ack" in table and "rolling back v1" in table


def test_acknowledging_twice_an_unknown_or_a_resolved_alert_is_refused(tmp_path: Path, receiver: Receiver,
                                                                        cli_env: dict[str, str]) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b"), "digits")
    config = _config(receiver.url, DRIFT)
    alerter = alerts.Alerter(reg.engine, config)
    alerter.apply("digits", [alerts.Finding(config.rules[0], 1, True, "drift", {})], now=1000.0)
    alerter.apply("digits", [alerts.Finding(config.rules[0], 2, True, "drift", {})], now=1000.0)
    first, second = sorted(a["id"] for a in Monitor(reg).alerts("digits"))
    alerts.acknowledge(reg.engine, first, actor="ops@pager", reason="on it", now=0.0)
    with pytest.raises(UsageError) as e:
        alerts.acknowledge(reg.engine, first, actor="someone@else", reason=None)
    assert str(e.value) == (f"alert {first} (drift on digits v1) was already acknowledged by ops@pager at "
                            "1970-01-01T00:00:00Z: on it")
    with pytest.raises(NotFound, match="no alert 999 "):
        alerts.acknowledge(reg.engine, 999, actor="ops@pager", reason=None)
    alerter.apply("digits", [alerts.Finding(config.rules[0], 2, False, "calm", {})], now=1010.0)
    alerter.close()
    with pytest.raises(UsageError) as e:
        alerts.acknowledge(reg.engine, second, actor="ops@pager", reason=None)
    assert str(e.value) == (f"alert {second} (drift on digits v2) is resolved since 1970-01-01T00:16:50Z: only an "
                            "open (firing or unknown) alert can be acknowledged")
    for args, code, message in [([str(first)], 2, "already acknowledged by ops@pager"),
                                (["999"], 1, "no alert 999"), ([str(second)], 2, "is resolved since")]:
        p = run_cli(["monitor", "ack", *args, "--json"], cli_env, check=False)
        assert p.returncode == code and message in p.stderr and message in json.loads(p.stdout)["error"], p.stderr
    assert [e.kind for e in reg.history("digits")].count("ack") == 0  # only `Monitor.acknowledge` records


def test_acknowledging_silences_a_firing_notification_still_being_retried(tmp_path: Path) -> None:
    flaky = Receiver(fail_first=3)
    try:
        reg = Registry(settings=Settings(home=tmp_path / "home"))
        config = _config(flaky.url, DRIFT)  # 3 attempts, 0.5 s then 1 s apart: all would fail
        alerter = alerts.Alerter(reg.engine, config)
        alerter.apply("digits", [alerts.Finding(config.rules[0], 1, True, "drift", {})], now=10.0)
        [open_] = Monitor(reg).alerts("digits")
        alerts.acknowledge(reg.engine, open_["id"], actor="ops@pager", reason=None)  # while the webhook fails
        alerter.close()
        assert flaky.received == [] and Monitor(reg).alerts("digits")[0]["notified"] == "silenced"
        flaky.fail_first = 0
        again = alerts.Alerter(reg.engine, config)
        again.apply("digits", [alerts.Finding(config.rules[0], 1, False, "calm", {})], now=20.0)
        again.close()
        assert [r["status"] for r in flaky.received] == ["resolved"]
    finally:
        flaky.close()


def test_two_evaluators_raise_one_drift_alert(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "a", reference=True), "digits", alias="production")
    rt = ModelRuntime(reg.load("digits@1"), 1, name="digits")
    log = PredictionLog(reg.engine)
    config = MonitorConfig(window=100, draws=500, accuracy_every_s=0)
    a = Evaluator(reg, lambda: ["digits"], config, holder="a", alerts=_config(receiver.url, DRIFT))
    b = Evaluator(reg, lambda: ["digits"], config, holder="b", alerts=_config(receiver.url, DRIFT))
    images, _ = traffic_data()
    feats = (255 - images[:300]).reshape(300, -1).astype(np.float32) / 255
    for i in range(3):  # three windows of inverted digits: one incident
        part = feats[i * 100:(i + 1) * 100]
        log.record_batch(rt, [f"r{i}-{j}" for j in range(100)], [1] * 100, part, rt.predict(part))
        log.flush()
        a.tick()
        b.tick()
    a.stop()
    b.stop()
    assert len(receiver.wait(1)) == 1 and receiver.received[0]["alert"]["details"]["tests"]
    st = Monitor(reg).status("digits")
    assert [al["rule"] for al in st["alerts"]] == ["drift"] and st["versions"]["1"]["alarm"]


# -- serving statistics and serving rules, through a real server ---------------------------------------
def test_rejected_inputs_raise_an_alert_from_every_workers_statistics(tmp_path: Path, receiver: Receiver) -> None:
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a"), "digits", alias="production")
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[webhook]\nurl = "{receiver.url}"\n[[rule]]\nname = "bad-input"\nkind = "rejections"\n'
                     'above = 0.2\nover_s = 300\nmin_requests = 20\n')
    env = server_env(home)
    with serve(home, "digits", "--workers", "2", "--alerts", str(rules), env=env) as srv:
        row = np.full(784, 0.5).tolist()
        for i in range(40):
            bad = i % 2 == 0
            doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784] if not bad else [1, 783],
                               "data": row if not bad else row[:783]}]}
            r = httpx.post(f"{srv.base}/v2/models/digits/infer", json=doc)  # fresh connections: both workers
            assert r.status_code == (400 if bad else 200)
        got = receiver.wait(1, timeout=60)
        assert got[0]["alert"]["rule"] == "bad-input" and got[0]["alert"]["version"] is None
        deadline = time.monotonic() + 30
        while (summary := stats.summary(reg.engine, "digits", since=time.time() - 300)).requests < 40:
            assert time.monotonic() < deadline, summary  # each worker writes its statistics every 5 s
            time.sleep(0.2)
        assert summary.requests == 40 and summary.rejected == 20 and summary.errors == 0
        assert summary.quantile_ms(0.99) is not None
        status = json.loads(run_cli(["monitor", "status", "digits", "--json"], env).stdout)
        assert [a["rule"] for a in status["alerts"]] == ["bad-input"]
        assert status["alerts"][0]["details"]["rejected"] >= 10
    assert len(receiver.received) == 1
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[[rule]]\nkind = "latency_p99"\n')
    r = run_cli(["serve", "digits", "--alerts", str(bad_file)], env, check=False)
    assert r.returncode == 2 and "rule[0].above_ms" in r.stderr
