"""The server as a deployment target: it follows alias moves and traffic changes in the registry
under load without a failed request, keeps serving when a new version is broken, drains on
SIGTERM, splits traffic across workers (weights, sticky keys, shadow), and pushes back when its
queue is full. Real `shipyard serve` processes, real registry, real HTTP clients."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import SHIPYARD
from ..serving import Server, serve, server_env
from ..waiting import wait_for

ROW = np.random.default_rng(0).random(784).round(4).tolist()
BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": ROW}]}).encode()


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Path, Registry]:
    """digits v1 (production) and v2 (no alias yet): different weights, same signature."""
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a", seed=0), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", seed=1), "digits")
    return home, reg


class Load:
    """Threads sending inference requests until stopped; records (thread, start, end, status or
    error, model version) for every request."""

    def __init__(self, base: str, threads: int = 4, body: bytes = BODY, gate: dict[str, bool] | None = None) -> None:
        self.base = base
        self.body = body
        self.gate = gate if gate is not None else {"open": True}
        self.records: list[tuple[int, float, float, Any, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set() and self.gate["open"]:
                t0 = time.monotonic()
                try:
                    r = c.post(f"{self.base}/v2/models/digits/infer", content=self.body)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    self.records.append((i, t0, time.monotonic(), r.status_code, version))
                except httpx.HTTPError as e:
                    self.records.append((i, t0, time.monotonic(), type(e).__name__, None))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def count(self, version: str | None = None) -> int:
        return sum(1 for r in self.records if r[3] == 200 and (version is None or r[4] == version))

    def failures(self) -> list[Any]:
        return [r for r in self.records if r[3] != 200]


def test_an_alias_move_under_load_switches_versions_without_a_failed_request(
        two_versions: tuple[Path, Registry]) -> None:
    home, reg = two_versions
    with serve(home, "digits", "--poll-s", "0.2") as srv, Load(srv.base) as load:
        wait_for(lambda: load.count() >= 300, "traffic on version 1")
        reg.set_alias("digits", "production", 2, reason="test switch")
        wait_for(lambda: load.count("2") >= 600, "traffic on version 2")
    assert load.failures() == []
    records = sorted(load.records, key=lambda r: r[1])
    assert {r[4] for r in records} == {"1", "2"}
    first_new = min(r[2] for r in records if r[4] == "2")
    assert all(r[4] == "2" for r in records if r[1] > first_new), "an old answer after the switch was seen"
    for i in range(4):  # each client sees the old version, then only the new one
        seq = [r[4] for r in records if r[0] == i]
        assert seq == sorted(seq), f"client {i} went back to the old version"
    assert len(load.records) > 900
    log = srv.log.read_text()
    assert "retiring digits version 1" in log and "freed digits version 1" in log


def test_a_broken_new_version_leaves_the_old_one_serving_and_is_reported(two_versions: tuple[Path, Registry]) -> None:
    home, reg = two_versions
    with serve(home, "digits", "--poll-s", "0") as srv:
        mv = reg.get("digits@2")
        reg.set_alias("digits", "production", 2)
        # the stored bundle of v2 is damaged after it was deployed, before this server loads it
        blob = reg.artifacts.path(mv.bundle_sha256)
        blob.chmod(0o644)
        blob.write_bytes(b"damaged")
        for cached in (home / "bundles").glob(f"{mv.bundle_sha256}*"):
            (cached / "model.onnx").write_bytes(b"also damaged")
        r = httpx.post(f"{srv.base}/v2/repository/refresh", timeout=30)
        assert r.status_code == 200
        assert "digits" in r.json()["errors"] and "sha256" in r.json()["errors"]["digits"]
        answer = httpx.post(f"{srv.base}/v2/models/digits/infer", content=BODY)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        health = srv.health()
        assert health["ready"] and "digits" in health["errors"]
        assert health["models"]["digits"]["routes"][0]["version"] == 1
        assert "cannot update digits" in srv.log.read_text()


def test_sigterm_drains_under_load_with_zero_failed_requests(two_versions: tuple[Path, Registry]) -> None:
    """The client stops sending once readiness says 503, as a load balancer would; every request
    it sent before that, including those sent after SIGTERM, is answered."""
    home, _ = two_versions
    gate = {"open": True}
    seen: list[Any] = []
    with serve(home, "digits", "--drain-grace", "1.5", "--drain-timeout", "10") as srv:

        def balancer() -> None:
            while gate["open"]:
                try:
                    code: Any = httpx.get(f"{srv.base}/v2/health/ready", timeout=2).status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                seen.append(code)
                if code != 200:
                    gate["open"] = False
                time.sleep(0.05)

        watcher = threading.Thread(target=balancer, daemon=True)
        with Load(srv.base, gate=gate) as load:
            watcher.start()
            wait_for(lambda: load.count() >= 200, "traffic")
            signalled = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=60) == 0
            watcher.join(timeout=10)
    assert 503 in seen, f"readiness never answered 503 (saw {seen[-5:]})"
    assert seen[seen.index(503) - 1] == 200  # 503 came while the server still answered, not a refusal
    assert load.failures() == []
    assert any(r[1] > signalled for r in load.records), "no request was sent after SIGTERM"


def _health_by_worker(srv: Server, want: int = 2, timeout: float = 60) -> dict[int, dict[str, Any]]:
    """Readiness detail from each worker (new connections spread over them)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only reached workers {sorted(seen)}"
        h = httpx.get(f"{srv.base}/v2/health/ready", timeout=5).json()
        seen[h["pid"]] = h
    return seen


def _wait_revision(srv: Server, revision: int, timeout: float = 60) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        workers = _health_by_worker(srv)
        if all(h["models"]["digits"]["revision"] >= revision for h in workers.values()):
            return workers
        assert time.monotonic() < deadline, f"revision {revision} did not reach every worker: {workers}"
        time.sleep(0.1)


def test_traffic_changes_reach_both_workers_with_weights_sticky_keys_and_shadow(
        two_versions: tuple[Path, Registry]) -> None:
    home, reg = two_versions
    reg.set_alias("digits", "candidate", 2)
    env = server_env(home)
    with serve(home, "digits", "--workers", "2", "--poll-s", "0.2", env=env) as srv:
        assert {h["models"]["digits"]["revision"] for h in _health_by_worker(srv).values()} == {0}
        cli = subprocess.run([*SHIPYARD, "traffic", "digits", "production=50", "candidate=50", "--reason", "canary"],
                             env=env, capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
        workers = _wait_revision(srv, 1)
        assert all(h["models"]["digits"]["routes"] == [{"alias": "production", "weight": 50, "version": 1},
                                                       {"alias": "candidate", "weight": 50, "version": 2}]
                   for h in workers.values())
        with httpx.Client() as c:
            versions = Counter(c.post(f"{srv.base}/v2/models/digits/infer", content=BODY).json()["model_version"]
                               for _ in range(400))
            assert versions["1"] > 100 and versions["2"] > 100, versions
            by_key = {}
            for key in (f"user-{i}" for i in range(40)):
                answers = {c.post(f"{srv.base}/v2/models/digits/infer", content=BODY,
                                  headers={"X-Shipyard-Route-Key": key}).json()["model_version"] for _ in range(5)}
                assert len(answers) == 1, f"{key} was answered by {answers}"
                by_key[key] = answers.pop()
            assert set(by_key.values()) == {"1", "2"}
        # shadow: the candidate sees a copy of every request, the clients only production's answers
        r = httpx.post(f"{srv.base}/v2/repository/models/digits/traffic",
                       json={"weights": {"production": 100}, "shadow": "candidate", "reason": "shadow it"})
        assert r.status_code == 200 and r.json()["shadow"] == "candidate", r.text
        _wait_revision(srv, 2)
        with httpx.Client() as c:
            answered = {c.post(f"{srv.base}/v2/models/digits/infer", content=BODY).json()["model_version"]
                        for _ in range(200)}
        assert answered == {"1"}
        compared = sum(h["shadow"]["compared"] for h in _health_by_worker(srv).values())
        assert compared > 0
    kinds = [e.kind for e in reg.history("digits")]
    assert kinds.count("traffic") == 2


def test_metadata_shows_batching_and_a_full_queue_answers_503_with_retry_after(
        two_versions: tuple[Path, Registry]) -> None:
    home, _ = two_versions
    args = ["digits", "--max-batch-size", "64", "--max-delay-ms", "1500", "--max-queue", "64", "--timeout-ms", "8000"]
    big = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [60, 784], "data": ROW * 60}]})
    small = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [10, 784], "data": ROW * 10}]})
    with serve(home, *args) as srv:
        meta = httpx.get(f"{srv.base}/v2/models/digits").json()
        batching = meta["parameters"]["batching"]
        assert {k: batching[k] for k in ("max_batch_size", "max_delay_ms", "max_queue", "timeout_ms", "concurrency",
                                         "enabled", "latency_target_ms", "current_delay_ms")} == {
            "max_batch_size": 64, "max_delay_ms": 1500.0, "max_queue": 64, "timeout_ms": 8000.0,
            "concurrency": 1024, "enabled": True, "latency_target_ms": None, "current_delay_ms": 1500.0}
        assert batching["runs"] == "inline" and batching["stats"]["rejected"] == 0
        results: list[httpx.Response] = []

        def send(body: str) -> None:
            results.append(httpx.post(f"{srv.base}/v2/models/digits/infer", content=body, timeout=30))

        def queued() -> int:
            return int(httpx.get(f"{srv.base}/v2/models/digits").json()["parameters"]["batching"]["stats"]["requests"])

        first = threading.Thread(target=send, args=(big,))
        first.start()
        # the 60 wait in the queue for company (1.5 s); once they are there, 10 more do not fit in 64
        wait_for(queued, "the 60-instance request to be queued", timeout=30, interval=0.01)
        send(small)
        first.join()
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 503], [r.text for r in results]
        refused = next(r for r in results if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1 and "queue is full" in refused.json()["error"]
        too_big = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [65, 784],
                                          "data": ROW * 65}]})
        r = httpx.post(f"{srv.base}/v2/models/digits/infer", content=too_big, timeout=30)
        assert r.status_code == 400 and "at most 64" in r.json()["error"]


def test_bad_batching_flags_are_refused_together(tmp_path: Path) -> None:
    r = subprocess.run([*SHIPYARD, "serve", "--max-batch-size", "64", "--max-queue", "8", "--max-delay-ms", "-1"],
                       env=server_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "max_delay_ms must be ≥ 0" in r.stderr and "max_queue (8) must hold at least one full batch" in r.stderr


def test_latency_target_mode_adapts_and_reports_its_decisions(two_versions: tuple[Path, Registry]) -> None:
    home, _ = two_versions
    with serve(home, "digits", "--latency-target-ms", "40") as srv, Load(srv.base, threads=2) as load:
        meta: dict[str, Any] = {}

        def decided() -> bool:
            meta.update(httpx.get(f"{srv.base}/v2/models/digits").json()["parameters"]["batching"])
            return sum(meta["decisions"][k] for k in ("raise", "cut", "hold")) >= 2

        wait_for(decided, "two latency-target decisions")
    assert meta["latency_target_ms"] == 40.0
    last = meta["decisions"]["last"][-1]
    assert last["action"] in ("raise", "cut", "hold") and last["samples"] >= 50 and last["p99_ms"] > 0
    assert 0 <= meta["current_delay_ms"] <= 20.0  # capped at half the target when --max-delay-ms is 0
    assert load.failures() == []
    assert "latency target 40.0 ms" in srv.log.read_text() or meta["decisions"]["hold"] >= 2
