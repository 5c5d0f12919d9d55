"""The server in this process: `create_app(ServeConfig(...))` over a real SQLite registry with tiny
real bundles in ONNX Runtime, driven through its ASGI interface (lifespan included). The same
routes, statuses and bodies a real client sees, without a subprocess or a socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from harness.bundles import tiny_onnx
from shipyard.errors import BadRequest, NotFound
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.codec import decode_v2
from shipyard.serve.config import ServeConfig
from shipyard.serve.http import HttpApp

from ..asgi import running

Scenario = Callable[[httpx.AsyncClient, HttpApp], Awaitable[None]]


def run(registry: Registry, scenario: Scenario, **config: Any) -> None:
    defaults: dict[str, Any] = {"metrics": False, "poll_s": 0.0}
    app = create_app(ServeConfig(**{**defaults, **config}), registry=registry)

    async def main() -> None:
        async with running(app) as client:
            await scenario(client, app)

    asyncio.run(main())


async def idle(app: HttpApp, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while app.plane.busy:
        assert time.monotonic() < deadline, "queued batches or shadow copies still running"
        await asyncio.sleep(0.01)


def features(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


def infer_body(x: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], **extra}).encode()


def expected(seed: int, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(tiny_onnx(10, seed), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_v2_infer_answers_what_onnx_runtime_computes(registry: Registry) -> None:
    x = features()

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post("/v2/models/tiny/infer", content=infer_body(x, id="req-1"),
                         headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert r.headers["x-request-id"] == "req-1" == doc["id"] and doc["model_version"] == "1"
        probs = np.array(doc["outputs"][0]["data"], np.float32).reshape(3, 10)
        np.testing.assert_allclose(probs, expected(1, x), rtol=1e-5)
        assert doc["outputs"][1]["data"] == [str(i) for i in probs.argmax(1)]
        # a version named in the path answers from that version
        r2 = await c.post("/v2/models/tiny/versions/2/infer", content=infer_body(x))
        assert r2.status_code == 200, r2.text
        probs2 = np.array(r2.json()["outputs"][0]["data"], np.float32).reshape(3, 10)
        np.testing.assert_allclose(probs2, expected(2, x), rtol=1e-5)
        assert r2.headers["x-request-id"] not in ("", "req-1")  # generated when absent

    registry.set_traffic("tiny", {"production": 100}, shadow="candidate")  # both versions loaded
    run(registry, scenario, models=("tiny",))


def test_v2_binary_outputs_and_v1_predict(registry: Registry) -> None:
    x = features(2)

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        body = infer_body(x, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}])
        r = await c.post("/v2/models/tiny/infer", content=body)
        hlen = int(r.headers["inference-header-content-length"])
        assert r.headers["content-type"] == "application/octet-stream"
        probs = np.frombuffer(r.content[hlen:], "<f4").reshape(2, 10)
        np.testing.assert_allclose(probs, expected(1, x), rtol=1e-5)
        v1 = await c.post("/v1/models/tiny:predict", json={"instances": x.tolist()})
        assert v1.status_code == 200
        got = np.array([p["probabilities"] for p in v1.json()["predictions"]], np.float32)
        np.testing.assert_allclose(got, probs, rtol=1e-5)
        assert (await c.get("/v1/models/tiny")).json() == {"name": "tiny", "ready": True, "version": "1"}

    run(registry, scenario)


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v2/models/tiny/infer", b"{nope", 400, "not valid JSON"),
    ("POST", "/v2/models/nosuch/infer", b"{}", 404, "unknown model 'nosuch'"),
    ("POST", "/v2/models/tiny/versions/9/infer", b"{}", 404, "no version '9'"),
    ("POST", "/v2/models/tiny/infer", infer_body(np.zeros((1, 5), np.float32)), 400, "must have shape [-1, 784]"),
    ("POST", "/v2/models/tiny/infer", b"0" * (2 << 20), 413, "over the"),
    ("GET", "/v2/models/tiny/infer", b"", 405, "infer takes POST"),
    ("POST", "/v2/health/ready", b"", 405, "takes GET"),
    ("GET", "/nowhere", b"", 404, "no route GET /nowhere"),
    ("POST", "/v1/models/tiny:predict", b'{"instances": [[1, 2]]}', 400, "each instance must have shape"),
    ("POST", "/v2/models/tiny/feedback", b'{"feedback": []}', 400, "send {\"feedback\""),
])
def test_bad_requests_get_their_status_and_a_named_reason(registry: Registry, method: str, path: str, body: bytes,
                                                          status: int, message: str) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.request(method, path, content=body)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]
        assert (await c.get("/v2/health/ready")).status_code == 200

    run(registry, scenario, max_body_mb=1.0)


def test_openapi_is_the_route_table(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        doc = (await c.get("/openapi.json")).json()
        table = {(r.pattern, m.lower()) for r in app.routes for m in r.docs}
        documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
        assert documented == table
        assert doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]["schema"]["examples"] == ["tiny"]
        for path, method in sorted(documented):
            if path.endswith("/unload"):
                continue
            url = path.replace("{name}", "tiny").replace("{version}", "1")
            r = await c.request(method.upper(), url, content=b"{}" if method == "post" else None)
            assert r.status_code < 500 and "no route" not in r.text, (method, path, r.text)

    run(registry, scenario)


def test_traffic_split_is_written_to_the_registry_and_applied(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post("/v2/repository/models/tiny/traffic",
                         json={"weights": {"production": 0, "candidate": 100}, "reason": "test"})
        assert r.status_code == 200, r.text
        assert r.json()["weights"] == {"candidate": 100} == registry.traffic("tiny").weights
        doc = (await c.post("/v2/models/tiny/infer", content=infer_body(features()))).json()
        assert doc["model_version"] == "2"
        bad = await c.post("/v2/repository/models/tiny/traffic", json={"weights": {"production": True}})
        assert bad.status_code == 400 and "whole percentages" in bad.json()["error"]
        assert (await c.get("/v2/repository/models/tiny/traffic")).json()["weights"]["candidate"] == 100

    run(registry, scenario, models=("tiny",))


def test_management_needs_the_token_or_loopback(registry: Registry) -> None:
    async def closed(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post("/v2/repository/models/tiny/unload")
        assert r.status_code == 403 and "management routes are off" in r.json()["error"]
        assert (await c.post("/v2/models/tiny/infer", content=infer_body(features()))).status_code == 200

    run(registry, closed, host="0.0.0.0")

    async def token(c: httpx.AsyncClient, app: HttpApp) -> None:
        assert (await c.post("/v2/repository/index")).status_code == 401
        wrong = await c.post("/v2/repository/index", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await c.post("/v2/repository/index", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and [m["name"] for m in ok.json()] == ["tiny"]
        # inference stays open unless auth_inference
        assert (await c.post("/v2/models/tiny/infer", content=infer_body(features()))).status_code == 200

    run(registry, token, host="0.0.0.0", token="s3cret")

    async def inference(c: httpx.AsyncClient, app: HttpApp) -> None:
        assert (await c.post("/v2/models/tiny/infer", content=infer_body(features()))).status_code == 401
        ok = await c.post("/v2/models/tiny/infer", content=infer_body(features()),
                          headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200

    run(registry, inference, token="s3cret", auth_inference=True)


def test_feedback_labels_a_logged_prediction(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post("/v2/models/tiny/infer", content=infer_body(features(1), id="fb-1"))
        label = r.json()["outputs"][1]["data"][0]
        ok = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "fb-1", "label": label}]})
        assert ok.status_code == 200 and ok.json()["accepted"] == 1, ok.text
        unknown = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "never", "label": "1"}]})
        assert unknown.status_code == 404 and unknown.json()["unknown"] == 1

    run(registry, scenario, evaluate=False)


def test_the_data_plane_is_callable_without_http(registry: Registry) -> None:
    x = features(4)

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        plane = app.plane
        ans = await plane.infer_v2("tiny", None, decode_v2(infer_body(x, id="direct")))
        assert ans.rid == "direct" and ans.version == "1" and ans.binary_header is None
        doc = json.loads(ans.body)
        np.testing.assert_allclose(np.array(doc["outputs"][0]["data"], np.float32).reshape(4, 10), expected(1, x),
                                   rtol=1e-5)
        v1 = await plane.predict_v1("tiny", x)
        assert len(json.loads(v1.body)["predictions"]) == 4
        with pytest.raises(NotFound, match="unknown model"):
            await plane.infer_v2("nope", None, decode_v2(infer_body(x)))
        two = [{"name": n, "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784} for n in ("input", "other")]
        with pytest.raises(BadRequest, match="exactly one input"):
            await plane.infer_v2("tiny", None, decode_v2(json.dumps({"inputs": two}).encode()))
        assert plane.metadata("tiny", None)["parameters"]["batching"]["runs"] in ("inline", "thread")

    run(registry, scenario)


def test_shadow_copies_are_compared_and_never_delay_the_answer(registry: Registry) -> None:
    registry.set_traffic("tiny", {"production": 100}, shadow="candidate")

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        for i in range(5):
            r = await c.post("/v2/models/tiny/infer", content=infer_body(features(2, seed=i)))
            assert r.json()["model_version"] == "1"
        await asyncio.wait_for(idle(app), 30)  # the copies run after the answers
        stats = (await c.get("/v2/health/ready")).json()["shadow"]
        assert stats["mirrored"] == 5 and stats["compared"] == 10 and stats["failed"] == 0

    run(registry, scenario, models=("tiny",))
