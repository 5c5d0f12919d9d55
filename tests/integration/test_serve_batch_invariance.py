"""Batch invariance through real `shipyard serve` processes (issue 14 §7): the optimizer's own
bundle, batched, answers an input the same alone and inside full batches of other clients'
requests; a batch-variant (int8-dynamic) version stops the server at start-up with the reason, or
is served unbatched with --unbatched-if-variant."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from harness.pg import free_port
from harness.variant_bundles import dynamic_bundle, int8_dynamic_onnx
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import SHIPYARD
from ..serving import serve, server_env

if TYPE_CHECKING:
    from ..conftest import Champion

X = np.random.default_rng(11).random((300, 784), dtype=np.float32)


def infer(base: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(f"{base}/v2/models/{name}/infer", content=json.dumps(body), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def dynamic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose `tiny` production version ships int8-dynamic, as optimize records it."""
    work = tmp_path_factory.mktemp("dynamic")
    model = int8_dynamic_onnx(work / "quantizing")
    reg = Registry(settings=Settings(home=work / "home"))
    reg.register(dynamic_bundle(work / "bundle", model, measured=True), "tiny", alias="production")
    return work / "home"


def test_the_optimized_bundle_answers_the_same_alone_and_inside_full_batches(champion: Champion) -> None:
    settings, reg = champion
    rng = np.random.default_rng(3)
    probes = X[rng.choice(len(X), 5, replace=False)]
    with serve(settings.home, "digits") as srv:  # batching on, no delay: one request alone is a batch of one
        solo = np.concatenate([infer(srv.base, "digits", p[None]) for p in probes])
        assert json.loads(httpx.get(f"{srv.base}/v2/models/digits", timeout=10).text)[
            "parameters"]["batching"]["invariance"]["measured"] == "by optimize"
    # only a full batch of 64 flushes: each probe runs with 63 instances of other clients' requests
    with serve(settings.home, "digits", "--max-delay-ms", "60000", "--timeout-ms", "120000") as srv, \
            ThreadPoolExecutor(16) as pool:
        inside = []
        for p in probes:
            cuts = np.sort(rng.choice(np.arange(1, 63), int(rng.integers(1, 14)), replace=False))
            requests = np.split(X[rng.integers(0, len(X), 63)], cuts)
            at = int(rng.integers(0, len(requests) + 1))
            requests.insert(at, p[None])
            answers = list(pool.map(lambda x: infer(srv.base, "digits", x), requests))
            inside.append(answers[at][0])
        meta = httpx.get(f"{srv.base}/v2/models/digits", timeout=10).json()["parameters"]["batching"]
        assert meta["stats"]["batches"] == len(probes) and meta["stats"]["instances"] == 64 * len(probes)
    assert float(np.abs(np.stack(inside) - solo).max()) <= 1e-6


def test_serve_refuses_to_start_a_batch_variant_version_and_says_why(dynamic_home: Path) -> None:
    r = subprocess.run([*SHIPYARD, "serve", "tiny", "--port", str(free_port())], env=server_env(dynamic_home),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "tiny version 1 (int8-dynamic) answers differently inside a batch than alone" in r.stderr, r.stderr
    assert "--unbatched-if-variant" in r.stderr


def test_serve_unbatched_if_variant_serves_it_one_request_at_a_time(dynamic_home: Path) -> None:
    with serve(dynamic_home, "tiny", "--unbatched-if-variant") as srv, ThreadPoolExecutor(8) as pool:
        meta = httpx.get(f"{srv.base}/v2/models/tiny", timeout=10).json()["parameters"]["batching"]
        assert meta["enabled"] is False and meta["invariance"] == {
            "invariant": False, "max_diff": 0.0123, "measured": "by optimize"}
        solo = np.concatenate([infer(srv.base, "tiny", row[None]) for row in X[:32]])
        together = np.concatenate(list(pool.map(lambda row: infer(srv.base, "tiny", row[None]), X[:32])))
        assert np.array_equal(solo, together)
        assert "serving it unbatched (--unbatched-if-variant)" in srv.log.read_text()
