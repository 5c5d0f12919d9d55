"""Scale-out on real parts: 3 `shipyard serve` replicas, each in its own network namespace (a
separate test host with its own home and caches), behind HAProxy with active health checks, on one
PostgreSQL and one shared artifact folder. Everything goes through the balancer under continuous
load, and every test counts failed requests: there must be none."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle, traffic_data
from harness.topology import Load, Topology
from shipyard.registry import Registry
from shipyard.store.engine import dispose_engines

from ..conftest import _free_port, run_cli
from ..waiting import wait_for
from ..webhook import Receiver
from .test_monitor import _query

pytestmark = pytest.mark.slow
MODEL = "tiny"


def rows(x: np.ndarray, n: int = 200) -> list[list[float]]:
    return np.round(x[:n].reshape(min(n, len(x)), -1) / 255.0, 3).astype(float).tolist()


X_LIVE, Y_LIVE = traffic_data()
LIVE = rows(X_LIVE, 1500)  # all of them: a short cycle of rows repeated is a drift of its own
SHIFTED = rows(255 - X_LIVE, 1500)  # inverted images: the input distribution moves a long way


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("scale-out")
    t = Topology(root, n=3)
    receiver = Receiver(host="0.0.0.0")
    try:
        t.up()
        hook = f"http://{t.host_addr}:{receiver.server.server_port}/hook"
        (root / "alerts.toml").write_text(
            f'[webhook]\nurl = "{hook}"\nretries = 2\ntimeout_s = 2\n'
            '[[rule]]\nname = "drift"\nkind = "drift"\nwindows = 2\n')
        t.serve_args = (MODEL, "--workers", "1", "--window", "100", "--window-max-age-s", "3",
                        "--alerts", str(root / "alerts.toml"), "--drain-grace", "0.5")
        op = t.operator = Registry(settings=t.operator_settings())  # type: ignore[attr-defined]
        for seed in (1, 2, 3):
            op.register(make_bundle(root / f"bundle-{seed}", seed=seed, reference=True), MODEL)
        op.set_alias(MODEL, "production", 1)
        t.receiver = receiver  # type: ignore[attr-defined]
        t.start_all()
        yield t
    finally:
        receiver.close()
        dispose_engines()  # before the database goes: no pooled connection outlives it
        t.down()


def _op(t: Topology) -> Registry:
    return t.operator  # type: ignore[attr-defined, no-any-return]


def _settle(t: Topology) -> None:
    """Back to the starting state between tests: every replica up, production → 1, no split."""
    for r in t.replicas:
        if r.proc is None or r.proc.poll() is not None:
            t.start(r)
            t.wait_ready(r)
    op = _op(t)
    if op.traffic(MODEL).revision and (op.traffic(MODEL).weights != {"production": 100} or op.traffic(MODEL).shadow):
        op.set_traffic(MODEL, {"production": 100})
    op.set_alias(MODEL, "production", 1)
    t.wait_balanced()
    wait_all_serve(t, "1")


_next = iter(range(1 << 62))


def body() -> dict:  # type: ignore[type-arg]
    """A V2 request of the next live row: traffic the drift monitor takes for normal (one row sent
    over and over would be a drift of its own)."""
    x = LIVE[next(_next) % len(LIVE)]
    return {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x}]}


def wait_all_serve(t: Topology, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for r in t.replicas:
        url = f"{r.base}/v2/models/{MODEL}/infer"
        while httpx.post(url, json=body(), timeout=10).json()["model_version"] != version:
            assert time.monotonic() < deadline, f"{r.name} still serves another version"
            time.sleep(0.1)


def served_by(load: Load, since: float = 0.0) -> Counter[str]:
    return Counter(o.served_by for o in load.outcomes if o.t >= since and o.status == 200)


def test_an_alias_move_switches_every_replica_with_zero_failed_requests(topo: Topology) -> None:
    _settle(topo)
    with Load(topo.lb, MODEL, LIVE) as load:
        load.wait_for(60)
        t_move = time.monotonic()
        _op(topo).set_alias(MODEL, "production", 2, reason="deploy 2")
        deadline = time.monotonic() + 30
        while True:  # every replica answers with version 2 (NOTIFY, or the poll as the fallback)
            recent = [o for o in load.outcomes[-60:] if o.t > t_move]
            if len(recent) >= 60 and {o.version for o in recent} == {"2"} and \
                    {o.served_by for o in recent} == {"r1", "r2", "r3"}:
                break
            assert time.monotonic() < deadline, Counter((o.served_by, o.version) for o in load.outcomes[-60:])
            time.sleep(0.1)
    assert load.failures() == [], load.failures()[:3]
    assert set(served_by(load)) == {"r1", "r2", "r3"}  # (how fast they converge is scale_bench's measure)


def test_a_killed_replica_is_routed_around_and_rejoins_only_once_ready(topo: Topology) -> None:
    _settle(topo)
    victim = topo.replicas[1]

    def retried() -> int:  # requests HAProxy sent again (to the same server, or to another one)
        row = topo.lb_stats()["BACKEND"]
        return int(row["wretr"] or 0) + int(row["wredis"] or 0)

    with Load(topo.lb, MODEL, LIVE) as load:
        load.wait_for(60)
        retried_before = retried()
        topo.kill(victim)  # SIGKILL to the whole host's processes, requests in flight
        t_kill = time.monotonic()
        deadline = time.monotonic() + 10
        while topo.lb_status()[victim.name].startswith("UP"):  # the health checks notice
            assert time.monotonic() < deadline, topo.lb_status()
            time.sleep(0.05)
        t_down = time.monotonic()
        assert retried() > retried_before  # what met the dead replica was retried, not failed
        load.wait_for(300)
        assert not [o for o in load.outcomes if o.t > t_down and o.served_by == victim.name]

        topo.start(victim)  # back: it must get no traffic before it reports ready
        t_start = time.monotonic()
        ready_at = topo.wait_ready(victim)
        deadline = time.monotonic() + 20
        while not [o for o in load.outcomes if o.t > t_start and o.served_by == victim.name]:
            assert time.monotonic() < deadline, topo.lb_status()
            time.sleep(0.1)
        first = min(o.t for o in load.outcomes if o.t > t_start and o.served_by == victim.name)
        load.wait_for(60)
    assert load.failures() == [], load.failures()[:3]
    assert first >= ready_at - 0.15  # the balancer sent nothing before it was ready (0.1 s polls here)
    assert {o.served_by for o in load.outcomes if t_kill < o.t < t_start} >= {"r1", "r3"}


def test_the_prediction_log_counts_a_retried_request_once(topo: Topology) -> None:
    """What the balancer's retry does when a replica died after logging but before answering:
    the same request id lands on two replicas. Windows and exports count it once."""
    from shipyard.monitor import predlog

    _settle(topo)
    doc = body()
    rid = f"retried-{time.time_ns()}"
    for r in topo.replicas[:2]:
        resp = httpx.post(f"{r.base}/v2/models/{MODEL}/infer", json=doc, headers={"x-request-id": rid}, timeout=10)
        assert resp.headers["x-request-id"] == rid and resp.json()["id"] == rid
    engine = _op(topo).engine
    deadline = time.monotonic() + 10
    while True:
        logged = predlog.read(engine, MODEL, since=time.time() - 60)
        raw = sum(row.request_ids.decode().split("\n").count(rid) for row in _raw_chunks(engine))
        if raw == 2:
            break
        assert time.monotonic() < deadline, raw
        time.sleep(0.2)
    assert logged.request_ids.count(rid) == 1
    bad = httpx.post(f"{topo.lb}/v2/models/{MODEL}/infer", json=doc, headers={"x-request-id": "a\tb"}, timeout=10)
    assert bad.status_code == 400 and "request id" in bad.json()["error"]


def _raw_chunks(engine):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    from shipyard.store.schema import prediction_chunks as p

    with engine.connect() as conn:
        return conn.execute(sa.select(p.c.request_ids).where(p.c.model == MODEL)).all()


def test_canary_weights_sticky_keys_and_shadow_agree_on_every_replica(topo: Topology) -> None:
    _settle(topo)
    op = _op(topo)
    op.set_alias(MODEL, "candidate", 3)
    op.set_traffic(MODEL, {"production": 70, "candidate": 30}, reason="canary")
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=10) as c:
        while True:  # every replica has the split: unkeyed requests reach the candidate too
            seen = {r.name: {c.post(f"{r.base}/v2/models/{MODEL}/infer", json=body()).json()["model_version"]
                             for _ in range(30)} for r in topo.replicas}
            if all(v == {"1", "3"} for v in seen.values()):
                break
            assert time.monotonic() < deadline, seen
        answers: dict[str, dict[str, str]] = {}
        for r in topo.replicas:
            answers[r.name] = {key: c.post(f"{r.base}/v2/models/{MODEL}/infer", json=body(),
                                           headers={"x-shipyard-route-key": key}).json()["model_version"]
                               for key in (f"user-{i}" for i in range(60))}
    assert answers["r1"] == answers["r2"] == answers["r3"]  # one key, one version, whichever replica
    share = Counter(answers["r1"].values())["3"] / 60
    assert 0.1 < share < 0.55, share  # about the configured 30 %

    op.set_traffic(MODEL, {"production": 100}, shadow="candidate", reason="shadow")
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=10) as c:
        for r in topo.replicas:  # every replica copies its requests to the shadow
            while _shadow_compared(c, r.base) == 0:
                c.post(f"{r.base}/v2/models/{MODEL}/infer", json=body())
                assert time.monotonic() < deadline, f"{r.name} sends nothing to the shadow"
                time.sleep(0.05)
            versions = {c.post(f"{r.base}/v2/models/{MODEL}/infer", json=body()).json()["model_version"]
                        for _ in range(20)}
            assert versions == {"1"}  # the shadow answers nobody
    op.set_traffic(MODEL, {"production": 100})


def _shadow_compared(c: httpx.Client, base: str) -> float:
    for line in c.get(f"{base}/metrics").text.splitlines():
        if line.startswith("shipyard_shadow_requests_total{") and 'outcome="compared"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_feedback_to_one_replica_joins_a_prediction_served_by_another(topo: Topology) -> None:
    _settle(topo)
    r1, _, r3 = topo.replicas
    with httpx.Client(timeout=10) as c:
        ids = []
        for i in range(20):
            doc = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": LIVE[i]}]}
            ids.append(c.post(f"{r1.base}/v2/models/{MODEL}/infer", json=doc).json()["id"])
        fb = {"feedback": [{"id": rid, "label": str(int(Y_LIVE[i]))} for i, rid in enumerate(ids)]}
        out = c.post(f"{r3.base}/v2/models/{MODEL}/feedback", json=fb).json()
    assert out["accepted"] == 20 and out["unknown"] == 0, out


def test_a_shifted_stream_through_every_replica_fires_one_webhook(topo: Topology) -> None:
    _settle(topo)
    receiver: Receiver = topo.receiver  # type: ignore[attr-defined]
    before = len(receiver.received)
    drift_alerts_before = len(_drift_alerts(topo, include_resolved=True))
    with Load(topo.lb, MODEL, SHIFTED) as load:
        receiver.wait(before + 1, timeout=90)
        (alert,) = _drift_alerts(topo)
        judged = len(alert["details"]["windows"])  # the drifting windows it fired on
        load.wait_for(300)  # keep drifting, until the evaluator has judged two more windows with the alert open
        wait_for(lambda: len(_drift_alerts(topo)) == 1 and
                 len(_drift_alerts(topo)[0]["details"]["windows"]) >= judged + 2,
                 "two more drifting windows evaluated while the alert is open", timeout=90, interval=0.2)
    assert load.failures() == []
    # the open alert took the new windows in: it did not fire again, nor open a second alert
    assert len(_drift_alerts(topo, include_resolved=True)) == drift_alerts_before + 1
    fired = receiver.received[before:]
    assert len(fired) == 1, fired
    assert fired[0]["alert"]["rule"] == "drift" and fired[0]["alert"]["model"] == MODEL
    assert set(served_by(load)) == {"r1", "r2", "r3"}
    # the windows cover every replica: one deployment-wide stream, evaluated by one lease holder
    status = json.loads(run_cli(["monitor", "status", MODEL, "--json"],
                                topo.settings_env(topo.root / "operator")).stdout)
    assert status["evaluator"]["holder"]
    assert sum(w["n"] for w in _windows(topo)) >= 300


def _drift_alerts(t: Topology, *, include_resolved: bool = False) -> list[dict[str, Any]]:
    """The drift alerts (firing ones only, unless `include_resolved`), newest first."""
    from shipyard.monitor.api import Monitor

    return [a for a in Monitor(_op(t)).alerts(MODEL, include_resolved=include_resolved) if a["rule"] == "drift"]


def _windows(t: Topology) -> list[dict]:  # type: ignore[type-arg]
    from shipyard.monitor.api import Monitor

    return Monitor(_op(t)).windows(MODEL, since=time.time() - 120)


def test_monitor_and_a_real_prometheus_see_the_whole_deployment(topo: Topology, tmp_path: Path) -> None:
    _settle(topo)
    with Load(topo.lb, MODEL, LIVE) as load:
        load.wait_for(90)
    env = topo.settings_env(topo.root / "operator")
    targets = [f"{r.addr}:8000" for r in topo.replicas]
    out = json.loads(run_cli(["export", "prometheus", *targets, "--interval", "1", "-o",
                              str(tmp_path / "prometheus.yml"), "--json"], env).stdout)
    port = _free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        exe = shutil.which("prometheus") or "/usr/bin/prometheus"
        prom = subprocess.Popen([exe, f"--config.file={out['path']}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                per = {r["metric"]["replica"]: float(r["value"][1]) for r in _query(
                    url, f'sum by (replica) (shipyard_requests_total{{model="{MODEL}",status="200"}})')}
                if set(per) == set(targets) and all(v > 0 for v in per.values()):
                    break
            except (httpx.HTTPError, KeyError):
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape all three replicas"
            time.sleep(0.5)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:  # each worker reports its serving statistics every 5 s
        serving = json.loads(run_cli(["monitor", "status", MODEL, "--json"], env).stdout)["serving"]
        if len(serving["workers"]) == 3:
            break
        assert time.monotonic() < deadline, serving
        time.sleep(1)
    assert serving["requests"] >= 90 and serving["errors"] == 0, serving
    frag = httpx.get(f"{topo.lb}/dashboard/fragment", params={"model": MODEL, "minutes": 10}, timeout=30)
    assert frag.status_code == 200 and "the whole deployment: 3 worker(s)" in frag.text, frag.text[:500]


def test_postgres_restarted_under_load_loses_no_request_and_no_alias_move(topo: Topology) -> None:
    _settle(topo)
    assert topo.pg is not None
    with Load(topo.lb, MODEL, LIVE) as load:
        load.wait_for(40)
        _op(topo).engine.dispose()  # this process holds no connection across the restart
        topo.pg.stop("fast")  # the database goes away: replicas keep serving what they loaded
        t_down = time.monotonic()

        def noticed() -> bool:  # every replica failed to read the registry, and served meanwhile
            down = [o for o in load.outcomes if o.t > t_down]
            return len(down) > 100 and {o.served_by for o in down} == {"r1", "r2", "r3"} and all(
                "registry" in httpx.get(f"{r.base}/v2/health/ready", timeout=10).json()["errors"]
                for r in topo.replicas)

        wait_for(noticed, "every replica to notice the database is gone while serving", timeout=60, interval=0.2)
        down = [o for o in load.outcomes if o.t > t_down]
        topo.pg.start()
        _op(topo).set_alias(MODEL, "production", 3, reason="after the restart")
        deadline = time.monotonic() + 40  # replicas reconnect (LISTEN again, re-read) and follow
        while {o.version for o in load.outcomes[-45:]} != {"3"} or len(served_by(load, time.monotonic() - 2)) < 3:
            assert time.monotonic() < deadline, Counter((o.served_by, o.version) for o in load.outcomes[-45:])
            time.sleep(0.2)
    assert load.failures() == [], load.failures()[:3]
    assert len(down) > 100 and {o.served_by for o in down} == {"r1", "r2", "r3"}


def test_two_operators_moving_one_alias_at_once_both_recorded(topo: Topology) -> None:
    _settle(topo)
    results: list[object] = []

    def move(v: int) -> None:
        reg = Registry(settings=topo.operator_settings(), actor=f"operator-{v}")
        try:
            results.append(reg.set_alias(MODEL, "production", v, reason=f"operator {v}"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results.append(e)

    before = len(_op(topo).history(MODEL))
    threads = [threading.Thread(target=move, args=(v,)) for v in (2, 3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(not isinstance(r, Exception) for r in results), results
    moves = [e for e in _op(topo).history(MODEL)[before:] if e.kind == "alias"]
    assert sorted(e.actor for e in moves) == ["operator-2", "operator-3"]  # both recorded, in order
    winner = moves[-1].to_version
    assert moves[-1].from_version == moves[0].to_version  # serialised: the second saw the first
    assert _op(topo).get(f"{MODEL}@production").version == winner
    wait_all_serve(topo, str(winner))
