"""Monitoring, step 1: Prometheus metrics read back through a real Prometheus, the prediction log
written by a real server, feedback joined in the database across workers, accuracy, retention,
and export. Real server processes, real database, real Prometheus (Debian package)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.bundle.reference import profile
from shipyard.monitor.feedback import accuracy, record_feedback
from shipyard.monitor.predlog import LogConfig, PredictionLog, read
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings
from shipyard.store.schema import prediction_chunks, prediction_inputs

from ..conftest import SHIPYARD, _free_port, stream_cli
from ..serving import serve, server_env
from ..waiting import clock_moves_on, wait_for

if TYPE_CHECKING:
    from ..conftest import Optimized

RNG = np.random.default_rng(0)
ROWS = RNG.random((40, 784)).round(4).astype(np.float32)


def v2(row: np.ndarray, rid: str | None = None) -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                       "data": row.tolist()}]}
    if rid:
        doc["id"] = rid
    return json.dumps(doc).encode()


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, Registry]:
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a", seed=0), "digits", alias="production")
    return home, reg


def test_predictions_are_logged_and_labels_reach_them_through_any_worker(home: tuple[Path, Registry]) -> None:
    home_path, reg = home
    with serve(home_path, "digits", "--workers", "2", "--poll-s", "0") as srv, httpx.Client() as c:
        answers = {}
        for i, row in enumerate(ROWS):
            r = c.post(f"{srv.base}/v2/models/digits/infer", content=v2(row, f"req-{i}"))
            assert r.status_code == 200
            answers[f"req-{i}"] = int(np.argmax(r.json()["outputs"][0]["data"]))
        multi = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 784],
                             "data": ROWS[:3].ravel().tolist()}], "id": "batch-1"}
        assert c.post(f"{srv.base}/v2/models/digits/infer", json=multi).status_code == 200
        # labels for every request, sent over fresh connections so they land on either worker
        truth = {rid: (pred if i % 4 else (pred + 1) % 10) for i, (rid, pred) in enumerate(answers.items())}
        for rid, label in truth.items():
            r = httpx.post(f"{srv.base}/v2/models/digits/feedback",
                           json={"feedback": [{"id": rid, "label": str(label)}]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        r = httpx.post(f"{srv.base}/v2/models/digits/feedback", json={"feedback": [{"id": "batch-1/2", "label": "4"}]})
        assert r.status_code == 200  # one instance of a multi-instance request, by ID/INDEX
        single_unknown = httpx.post(f"{srv.base}/v2/models/digits/feedback",
                                    json={"feedback": [{"id": "never-sent", "label": "1"}]})
        assert single_unknown.status_code == 404 and "never-sent" in single_unknown.json()["error"]
        mixed = httpx.post(f"{srv.base}/v2/models/digits/feedback", json={"feedback": [
            {"id": "req-1", "label": "2"}, {"id": "ghost", "label": "2"}, {"id": "req-2", "label": "cat"}]})
        body = mixed.json()
        assert mixed.status_code == 200 and (body["accepted"], body["unknown"], body["invalid"]) == (1, 1, 1)
        assert {i["id"]: i["status"] for i in body["items"]} == {"ghost": "unknown", "req-2": "invalid"}
        bad = httpx.post(f"{srv.base}/v2/models/digits/feedback", json={"labels": []})
        assert bad.status_code == 400 and "feedback" in bad.json()["error"]
    logged = read(reg.engine, "digits")
    assert len(logged) == 43 and set(answers) <= set(logged.request_ids)
    assert {"batch-1/0", "batch-1/1", "batch-1/2"} <= set(logged.request_ids)
    by_id = dict(zip(logged.request_ids, logged.predicted.tolist(), strict=True))
    assert all(by_id[rid] == pred for rid, pred in answers.items())
    truth["req-1"] = 2  # the second label replaced the first
    expected = np.mean([by_id[r] == truth[r] for r in truth] + [by_id["batch-1/2"] == 4])
    acc = accuracy(reg.engine, "digits", classes=[str(i) for i in range(10)])
    assert acc["n_labels"] == 41 and acc["realised"] == pytest.approx(expected)
    assert sum(v["n"] for v in acc["per_class"].values()) == 41


def test_the_log_keeps_projections_a_sample_and_a_ring_and_retention_bounds_them(home: tuple[Path, Registry]) -> None:
    _, reg = home
    rt = ModelRuntime(reg.load("digits@production"), version=1, name="digits")
    log = PredictionLog(reg.engine, LogConfig(sample=0.5, ring=30, max_rows=60, ring_rate=1e9))
    for k in range(4):
        x = RNG.random((25, 784)).astype(np.float32)
        log.record_batch(rt, [f"r{k}-{i}" for i in range(25)], [1] * 25, x, rt.predict(x))
        assert log.flush() == 25
        clock_moves_on()  # distinct chunk times
    log.record_batch(rt, ["shadow-copy"], [1], x[:1], rt.predict(x[:1]))
    log.record_batch(rt, [None], [1], x[:1], rt.predict(x[:1]))  # a shadow's copy is not logged
    log.flush()
    logged = read(reg.engine, "digits", projection=True)
    assert len(logged) == 101 and logged.projection is None  # tiny bundles carry no reference profile
    assert 20 < int(logged.sampled.sum()) < 80
    log.retain()
    with reg.engine.connect() as conn:
        kept = conn.execute(prediction_chunks.select()).all()
        rings = conn.execute(prediction_inputs.select().where(prediction_inputs.c.kind == "ring")).all()
    assert sum(r.n for r in kept) <= 60 + 25 and sum(r.n for r in kept) >= 60  # whole chunks, newest kept
    assert sum(r.n for r in rings) <= 30 + 25
    newest = read(reg.engine, "digits")
    assert "r3-24" in newest.request_ids and "r0-0" not in newest.request_ids


def test_projections_come_from_the_bundles_reference_profile(optimized: Optimized, tmp_path: Path) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(optimized[2].path, "fashion", alias="production")
    rt = ModelRuntime(reg.load("fashion@production"), version=1, name="fashion")
    log = PredictionLog(reg.engine, LogConfig())
    x = RNG.random((10, 784)).astype(np.float32)
    for lo, hi in ((0, 4), (4, 10)):  # two model calls: projected block by block in one flush
        log.record_batch(rt, [f"p{i}" for i in range(lo, hi)], [1] * (hi - lo), x[lo:hi], rt.predict(x[lo:hi]))
    log.flush()
    logged = read(reg.engine, "fashion", projection=True)
    assert logged.request_ids == [f"p{i}" for i in range(10)]
    with np.load(optimized[2].path / "reference.npz") as ref:
        centred = x.astype(np.float64) - ref["pca_mean"]
        coords = centred @ ref["pca_components"].T.astype(np.float64)
        residual = np.linalg.norm(centred - coords @ ref["pca_components"].astype(np.float64), axis=1)
        held_out = ref["val_profile"]
        same = profile(ref["pca_mean"], ref["pca_components"], x)
    expected = np.column_stack([coords, residual])  # the last column: distance from the PCA subspace
    assert logged.projection is not None and logged.projection.shape == (10, coords.shape[1] + 1)
    np.testing.assert_allclose(logged.projection.astype(np.float32), expected, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(same, expected, rtol=1e-9, atol=1e-9)  # one formula at bundle and serve time
    # the bundle carries the held-out validation inputs' profile, the reference drift tests need
    assert held_out.shape[1] == coords.shape[1] + 1 and len(held_out) > 100
    assert np.isfinite(held_out.astype(np.float32)).all() and (held_out[:, -1] > 0).all()


def test_late_labels_are_refused_and_labels_count_after_the_input_is_gone(home: tuple[Path, Registry]) -> None:
    _, reg = home
    rt = ModelRuntime(reg.load("digits@production"), version=1, name="digits")
    log = PredictionLog(reg.engine, LogConfig(sample=0.0, ring=0))
    x = RNG.random((2, 784)).astype(np.float32)
    log.record_batch(rt, ["old", "new"], [1, 1], x, rt.predict(x))
    log.flush()
    classes = [str(i) for i in range(10)]
    later = time.time() + 3600
    res = record_feedback(reg.engine, "digits", classes, [("old", "1"), ("new", "2")], horizon_s=1800, now=later)
    assert [i["status"] for i in res.items] == ["late", "late"]
    res = record_feedback(reg.engine, "digits", classes, [("old", "1"), ("new", 2), ("x", True)], horizon_s=7200)
    assert [i["status"] for i in res.items] == ["accepted", "accepted", "invalid"]
    with reg.engine.connect() as conn:
        assert conn.execute(prediction_inputs.select()).all() == []  # no input kept (ring 0, no sample) …
    assert accuracy(reg.engine, "digits")["n_labels"] == 2  # … and the labels still count


def test_export_writes_csv_and_parquet_with_labels(home: tuple[Path, Registry], tmp_path: Path) -> None:
    home_path, reg = home
    rt = ModelRuntime(reg.load("digits@production"), version=1, name="digits")
    log = PredictionLog(reg.engine, LogConfig())
    x = RNG.random((5, 784)).astype(np.float32)
    log.record_batch(rt, [f"e{i}" for i in range(5)], [1] * 5, x, rt.predict(x))
    log.flush()
    record_feedback(reg.engine, "digits", [str(i) for i in range(10)], [("e1", "7")], horizon_s=3600)
    env = server_env(home_path)
    r = subprocess.run([*SHIPYARD, "monitor", "export", "digits", "-o", str(tmp_path / "log.csv"), "--since", "1h",
                        "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["rows"] == 5
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["request_id"] for row in rows] == [f"e{i}" for i in range(5)]
    assert rows[1]["label"] == "7" and rows[0]["label"] == "" and rows[0]["version"] == "1"
    r = subprocess.run([*SHIPYARD, "monitor", "export", "digits", "-o", str(tmp_path / "log.parquet")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "log.parquet")
    assert table.num_rows == 5 and table.column("label").to_pylist()[1] == "7"
    bad = subprocess.run([*SHIPYARD, "monitor", "export", "digits", "-o", str(tmp_path / "x.txt"), "--since", "soon"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    none = subprocess.run([*SHIPYARD, "monitor", "export", "nosuch", "-o", str(tmp_path / "y.csv")], env=env,
                          capture_output=True, text=True)
    assert none.returncode == 1 and "no model 'nosuch'" in none.stderr


def test_monitor_run_json_prints_one_line_per_round_while_it_runs(home: tuple[Path, Registry]) -> None:
    home_path, _ = home
    lines, rc, err = stream_cli(["monitor", "run", "--json"], server_env(home_path), lines=2)
    rounds = [json.loads(line) for line in lines]  # JSON Lines without --once: one object per evaluation round
    assert all("digits" in r["evaluated"] and r["held_elsewhere"] == [] for r in rounds), (rounds, err)
    assert rc == 0 and "stopped" in err


def _prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shipyard\n"
                   f"    static_configs:\n      - targets: ['{target}']\n")
    with (tmp_path / "prometheus.log").open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log)
    return proc, f"http://127.0.0.1:{port}"


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def test_a_real_prometheus_scrapes_every_worker_merged(home: tuple[Path, Registry], tmp_path: Path) -> None:
    home_path, _ = home
    with serve(home_path, "digits", "--workers", "2", "--poll-s", "0") as srv:
        with httpx.Client() as c:
            for row in ROWS[:25]:
                assert httpx.post(f"{srv.base}/v2/models/digits/infer", content=v2(row)).status_code == 200
            assert c.post(f"{srv.base}/v2/models/nosuch/infer", content=v2(ROWS[0])).status_code == 404
        text = httpx.get(f"{srv.base}/metrics").text
        assert "# TYPE shipyard_requests_total counter" in text and "shipyard_batch_size_bucket" in text
        prom, url = _prometheus(tmp_path, srv.base.removeprefix("http://"))
        try:
            def scraped() -> bool:
                try:
                    got = _query(url, 'sum(shipyard_requests_total{model="digits",status="200"})')
                except httpx.HTTPError:
                    return False
                return bool(got) and float(got[0]["value"][1]) >= 25

            wait_for(scraped, "Prometheus to scrape the server")
            total = _query(url, 'sum(shipyard_requests_total{model="digits",status="200"})')
            assert float(total[0]["value"][1]) == 25  # both workers' counts, merged, nothing twice
            assert float(_query(url, 'sum(shipyard_requests_total{status="404"})')[0]["value"][1]) == 1
            alias = _query(url, 'shipyard_alias_version{model="digits",alias="production"}')
            assert alias and float(alias[0]["value"][1]) == 1
            weight = _query(url, 'shipyard_traffic_weight{model="digits",alias="production"}')
            assert float(weight[0]["value"][1]) == 1  # a 0-1 ratio (all of the traffic)
            hist = _query(url, 'sum(shipyard_request_seconds_count{model="digits"})')
            assert float(hist[0]["value"][1]) == 25
            loads = _query(url, 'sum(shipyard_model_loads_total{model="digits",outcome="ok"})')
            assert float(loads[0]["value"][1]) == 2  # one per worker
            wait_for(lambda: bool(_query(url, 'sum(shipyard_predictions_logged_total{model="digits"})')) and float(
                _query(url, 'sum(shipyard_predictions_logged_total{model="digits"})')[0]["value"][1]) == 25,
                "the prediction log's counter")
        finally:
            prom.terminate()
            prom.wait(timeout=30)
