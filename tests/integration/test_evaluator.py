"""Monitoring, step 2: the evaluator turns the shared prediction log into windows, tests them
against the bundle's reference profile with calibrated thresholds, persists the state, and
exactly one evaluator per deployment computes (a lease in the database). Real registry, real
database, real ONNX Runtime and a bundle with a real reference profile (MNIST sample)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from harness.bundles import make_bundle, traffic_data
from shipyard.errors import UsageError
from shipyard.monitor import metrics
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.feedback import record_feedback
from shipyard.monitor.predlog import PredictionLog
from shipyard.monitor.windows import status, windows
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings
from shipyard.store import leases
from shipyard.store.schema import monitor_state, monitor_windows

from ..conftest import run_cli
from ..monitoring import deploy
from ..serving import serve, server_env

CONFIG = MonitorConfig(window=100, min_window=30, max_age_s=60, draws=500, accuracy_every_s=0)


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[Registry, ModelRuntime]:
    reg, rt, _ = deploy(tmp_path)
    return reg, rt


def _send(log: PredictionLog, rt: ModelRuntime, images: np.ndarray, prefix: str) -> list[str]:
    """Log what the model answers for `images` (raw uint8), one request per image."""
    feats = rt.features("image", images) if "image" in rt.inputs else (images.reshape(len(images), -1) / 255.0
                                                                         ).astype(np.float32)
    probs = rt.predict(feats)
    ids = [f"{prefix}-{i}" for i in range(len(images))]
    log.record_batch(rt, ids, [1] * len(ids), feats, probs)
    log.flush()
    return ids


def test_no_shift_windows_stay_quiet_and_inverted_images_alarm(deployed: tuple[Registry, ModelRuntime]) -> None:
    reg, rt = deployed
    log = PredictionLog(reg.engine)
    ev = Evaluator(reg, lambda: ["digits"], CONFIG)
    images, labels = traffic_data()
    _send(log, rt, images[:300], "calm")
    ev.tick()
    state = status(reg.engine, "digits")[1]
    assert state["windows"] == 3 and state["skipped"] == 0 and state["pending"] == 0  # 300 rows, 3 windows
    assert set(state["drift"]) == {"input", "mean", "prediction", "confidence", "softmax"}
    assert not state["alarm"], state["drift"]
    th = state["thresholds"]
    assert th["window"] == 100 and 0 < th["input"] <= CONFIG.alpha / 5 and 0 < th["softmax"] <= CONFIG.alpha / 5
    assert state["accuracy"]["estimated"] is not None and state["accuracy"]["realised"] is None

    _send(log, rt, 255 - images[300:400], "inverted")
    ev.tick()
    state = status(reg.engine, "digits")[1]
    assert state["alarm"] and state["drift"]["input"]["alarm"], state["drift"]
    assert state["drift"]["input"]["p_value"] <= state["drift"]["input"]["threshold"]
    rows = windows(reg.engine, "digits")
    assert [w["alarm"] for w in rows] == [False, False, False, True] and rows[3]["n"] == 100
    text = metrics.render()[0].decode()
    assert 'shipyard_drift_alarm{model="digits",test="input",version="1"} 1.0' in text


def test_a_version_with_few_held_out_rows_is_watched_in_smaller_windows_and_says_so(tmp_path: Path) -> None:
    reg, rt, log = deploy(tmp_path, held_out=212)
    ev = Evaluator(reg, lambda: ["digits"], MonitorConfig(window=250, min_window=30, max_age_s=60, draws=500,
                                                          accuracy_every_s=0))
    images, _ = traffic_data()
    _send(log, rt, images[:250], "small")
    ev.tick()
    state = status(reg.engine, "digits")[1]
    # 106 calibration rows cannot calibrate windows of 250: watched in windows of 100 from the first one
    assert state["window"]["size"] == 100 and state["window"]["configured"] == 250
    assert "cannot calibrate windows of 250" in state["window"]["note"]
    assert state["windows"] == 2 and state["pending"] == 50 and state["drift"], state
    assert state["thresholds"]["window"] == 100


def test_a_flood_is_tested_by_its_newest_windows_and_the_rest_counted(deployed: tuple[Registry, ModelRuntime]) -> None:
    reg, rt = deployed
    log = PredictionLog(reg.engine)
    ev = Evaluator(reg, lambda: ["digits"], MonitorConfig(window=100, draws=500, max_windows_per_tick=2))
    images, _ = traffic_data()
    _send(log, rt, images[:450], "flood")
    ev.tick()
    state = status(reg.engine, "digits")[1]
    assert (state["windows"], state["skipped"], state["pending"]) == (2, 200, 50)
    first, second = windows(reg.engine, "digits")
    assert first["ts_last"] <= second["ts_first"]  # consecutive, oldest first


def test_labels_give_realised_accuracy_next_to_the_estimate(deployed: tuple[Registry, ModelRuntime]) -> None:
    reg, rt = deployed
    log = PredictionLog(reg.engine)
    images, labels = traffic_data()
    ids = _send(log, rt, images[:120], "r")
    probs = rt.predict((images[:120].reshape(120, -1) / 255.0).astype(np.float32))
    record_feedback(reg.engine, "digits", rt.bundle.classes, list(zip(ids, labels[:120].tolist(), strict=True)),
                    horizon_s=3600)
    Evaluator(reg, lambda: ["digits"], CONFIG).tick()
    acc = status(reg.engine, "digits")[1]["accuracy"]
    assert acc["n_labels"] == 120
    assert acc["realised"] == pytest.approx(float((probs.argmax(1) == labels[:120]).mean()))
    assert 0 <= acc["estimated"] <= 1
    assert set(acc["per_class"]) <= set(rt.bundle.classes)


def test_a_quiet_model_is_still_evaluated_once_its_window_is_old(deployed: tuple[Registry, ModelRuntime]) -> None:
    reg, rt = deployed
    log = PredictionLog(reg.engine)
    ev = Evaluator(reg, lambda: ["digits"], CONFIG)
    images, _ = traffic_data()
    _send(log, rt, images[:40], "slow")
    ev.tick()
    state = status(reg.engine, "digits")[1]
    assert state["windows"] == 0 and state["pending"] == 40
    ev.tick(now=time.time() + CONFIG.max_age_s + 1)
    state = status(reg.engine, "digits")[1]
    assert state["windows"] == 1 and state["window"]["n"] == 40 and state["pending"] == 0
    assert state["thresholds"]["window"] == 50  # the smallest size calibrated: never one calibration per window


def test_exactly_one_evaluator_computes_and_another_takes_over(deployed: tuple[Registry, ModelRuntime]) -> None:
    reg, rt = deployed
    log = PredictionLog(reg.engine)
    a = Evaluator(reg, lambda: ["digits"], CONFIG, holder="worker-a")
    b = Evaluator(reg, lambda: ["digits"], CONFIG, holder="worker-b")
    images, _ = traffic_data()
    _send(log, rt, images[:100], "x")
    assert "digits" in a.tick() and b.tick() == {}
    assert leases.current(reg.engine, "monitor:digits").holder == "worker-a"
    _send(log, rt, images[100:200], "y")
    assert b.tick() == {} and "digits" in a.tick()
    with reg.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(monitor_windows)).scalar() == 2
    a.stop()  # a clean stop gives the lease back at once
    _send(log, rt, images[200:300], "z")
    assert "digits" in b.tick()
    state = status(reg.engine, "digits")[1]
    assert state["evaluator"] == "worker-b"
    # b started from a's cursor: each prediction is in exactly one window
    assert [w["n"] for w in windows(reg.engine, "digits")] == [100, 100, 100]
    with reg.engine.connect() as conn:
        assert conn.execute(sa.select(monitor_state.c.cursor)).scalar() > 0

    _send(log, rt, images[300:360], "partial")  # b buffers 60, short of a window, then goes away
    assert b.tick()["digits"][1]["pending"] == 60
    b.stop()
    c = Evaluator(reg, lambda: ["digits"], CONFIG, holder="worker-c")
    _send(log, rt, images[360:400], "rest")
    assert c.tick()["digits"][1]["predictions_seen"] == 100  # the partial window was not lost
    assert [w["n"] for w in windows(reg.engine, "digits")] == [100, 100, 100, 100]


def test_an_expired_lease_passes_to_the_next_process(tmp_path: Path) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    assert leases.acquire(reg.engine, "job", "a", 10, now=100.0)
    assert not leases.acquire(reg.engine, "job", "b", 10, now=105.0)
    assert leases.acquire(reg.engine, "job", "a", 10, now=105.0)  # renewal
    assert not leases.acquire(reg.engine, "job", "b", 10, now=114.0)
    assert leases.acquire(reg.engine, "job", "b", 10, now=115.5)  # a stopped renewing
    assert not leases.acquire(reg.engine, "job", "a", 10, now=116.0)
    leases.release(reg.engine, "job", "a")  # not a's any more: nothing happens
    assert leases.current(reg.engine, "job", now=116.0).holder == "b"


def test_bad_monitor_settings_are_refused_together() -> None:
    with pytest.raises(UsageError, match="window must be at least 10.*alpha must be in"):
        MonitorConfig(window=5, min_window=2, alpha=0.9).check()


def _infer_images(client: httpx.Client, base: str, images: np.ndarray, prefix: str) -> None:
    for i in range(0, len(images), 10):  # 10 images per request: fewer round trips, same log rows
        chunk = (images[i:i + 10].reshape(-1, 784) / 255.0).astype(np.float32)
        doc = {"id": f"{prefix}-{i}", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(chunk.shape),
                                                  "data": chunk.ravel().tolist()}]}
        r = client.post(f"{base}/v2/models/digits/infer", json=doc)
        assert r.status_code == 200, r.text


def test_a_served_model_is_watched_and_status_shows_the_alarm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a", reference=True), "digits", alias="production")
    images, _ = traffic_data()
    env = server_env(home)
    with serve(home, "digits", "--workers", "2", "--window", "100", env=env) as srv, httpx.Client() as c:
        _infer_images(c, srv.base, images[:100], "calm")

        def state() -> dict:  # type: ignore[type-arg]
            out = run_cli(["monitor", "status", "digits", "--json"], env)
            return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

        deadline = time.monotonic() + 60
        while not (s := state())["versions"] or s["versions"]["1"]["windows"] < 1:
            assert time.monotonic() < deadline, s
            time.sleep(0.2)
        v1 = s["versions"]["1"]
        assert v1["aliases"] == ["production"] and not v1["alarm"] and not v1["stale"]
        assert s["evaluator"]["holder"].startswith("monitor@")
        _infer_images(c, srv.base, 255 - images[100:200], "inverted")
        while not (s := state())["versions"]["1"]["alarm"]:
            assert time.monotonic() < deadline, s
            time.sleep(0.2)
        v1 = s["versions"]["1"]
        assert v1["windows"] == 2 and v1["drift"]["input"]["alarm"]
        assert set(v1["accuracy"]) >= {"realised", "estimated", "n_labels"}
        check = run_cli(["monitor", "status", "digits", "--check"], env, check=False)
        assert check.returncode == 3 and "ALARM" in check.stdout
        text = httpx.get(f"{srv.base}/metrics").text
        assert 'shipyard_drift_alarm{model="digits",test="input",version="1"} 1.0' in text
        # one evaluator (in the server's supervisor) computed each window once
        assert [w["n"] for w in windows(reg.engine, "digits")] == [100, 100]
    assert "evaluating digits" in srv.log.read_text()
    assert leases.current(reg.engine, "monitor:digits") is None  # given back at shutdown


def test_a_log_chunk_committed_after_a_newer_one_is_still_read(tmp_path: Path, fresh_pg_url: str) -> None:
    """PostgreSQL hands out ids at insert and shows rows at commit: with several replicas writing,
    chunk N can become visible after chunk N+1 was read. The cursor waits at the hole."""
    from shipyard.store.schema import prediction_chunks

    reg = Registry(fresh_pg_url, settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "a", reference=True), "digits", alias="production")
    rt = ModelRuntime(reg.load("digits@1"), 1, name="digits")
    log = PredictionLog(reg.engine)
    images = traffic_data()[0]
    _send(log, rt, images[:40], "first")
    ev = Evaluator(reg, lambda: ["digits"], CONFIG)
    ev.tick()
    with reg.engine.connect() as conn:
        template = dict(conn.execute(sa.select(prediction_chunks)).mappings().first())  # type: ignore[arg-type]
    template.pop("id")
    template["request_ids"] = "\n".join(f"late-{i}" for i in range(template["n"])).encode()  # new requests
    late = reg.engine.connect()
    tx = late.begin()
    late.execute(prediction_chunks.insert().values(template))  # takes the next id, not yet committed
    _send(log, rt, images[40:70], "second")  # a newer id, committed first
    ev.tick()
    v = ev._versions[("digits", 1)]
    assert v.seen == 70 and ev._cursor["digits"] < max(ev._ahead["digits"])  # waiting at the hole
    tx.commit()
    late.close()
    ev.tick()
    assert v.seen == 110  # the late chunk was read after all
    assert not ev._ahead["digits"]
    dup = dict(template, request_ids="\n".join(f"first-{i}" for i in range(template["n"])).encode())
    with reg.engine.begin() as conn:  # a balancer's retry logged again by another replica
        conn.execute(prediction_chunks.insert().values(dup))
    ev.tick()
    assert v.seen == 110  # counted once


def test_other_models_rows_are_not_holes(tmp_path: Path) -> None:
    """The log's ids are one sequence for every model: a model's cursor passes the ids of another
    model's rows at once instead of waiting for them as for a commit on its way."""
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "a", reference=True), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", reference=True), "letters", alias="production")
    rts = {n: ModelRuntime(reg.load(f"{n}@1"), 1, name=n) for n in ("digits", "letters")}
    log = PredictionLog(reg.engine)
    images = traffic_data()[0]
    for i in range(4):  # interleaved chunks: digits 1, 3, 5, 7; letters 2, 4, 6, 8
        for n, rt in rts.items():
            _send(log, rt, images[i * 10:(i + 1) * 10], f"{n}-{i}")
    ev = Evaluator(reg, lambda: ["digits"], CONFIG)
    ev.tick()
    assert ev._cursor["digits"] == 7 and not ev._ahead["digits"]
    assert ev._versions[("digits", 1)].seen == 40
