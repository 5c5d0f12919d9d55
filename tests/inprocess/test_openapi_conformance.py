"""`/openapi.json` is true to the server: the in-process server's real answers (`create_app` over a
real registry and tiny real bundles, through ASGI) validated by openapi-core, an independent
OpenAPI 3.1 implementation, against the document that same server serves: every documented
operation answers as documented, and each status a test can provoke (200 JSON and binary, 400,
401, 403, 404, 413, 415, 421) has its documented body. The requests of the 200s are validated
too, so the document's request schemas take what the server takes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.config import ServeConfig
from shipyard.settings import Settings

from ..asgi import running

BASE = "http://127.0.0.1:8000"
SIGNATURE = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784]},
                        {"name": "image", "dtype": "uint8", "shape": [-1, 28, 28], "kind": "raw"}],
             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """`tiny`: version 1 behind `production`, 2 behind `candidate`; each takes ready features
    (FP32 784) or raw pixels (UINT8 28×28)."""
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b1", seed=1, signature=SIGNATURE), "tiny", alias="production")
    reg.register(make_bundle(tmp_path / "b2", seed=2, signature=SIGNATURE), "tiny", alias="candidate")
    return reg


class Conformance:
    """Sends requests to the app and validates each answer against the served document."""

    def __init__(self, client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        self.client = client
        self.doc = doc
        self.api = OpenAPI.from_dict(doc)
        self.seen: set[tuple[str, str, int]] = set()

    async def call(self, method: str, pattern: str, status: int, *, params: dict[str, str] | None = None,
                   body: bytes | None = None, json_body: Any = None, headers: dict[str, str] | None = None,
                   query: dict[str, str] | None = None) -> httpx.Response:
        path = pattern
        for k, v in (params or {}).items():
            path = path.replace("{" + k + "}", v)
        if json_body is not None:
            body = json.dumps(json_body).encode()
        headers = {"content-type": "application/json", **(headers or {})} if body is not None else headers or {}
        r = await self.client.request(method, path, content=body, headers=headers, params=query)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        request = MockRequest(BASE, method, path, path_pattern=pattern, view_args=params, args=query,
                              headers=headers, data=body, content_type=headers.get("content-type", ""))
        if status < 300:
            self.api.validate_request(request)
        ctype = r.headers.get("content-type", "")
        response = MockResponse(r.content, r.status_code, headers=dict(r.headers), content_type=ctype)
        self.api.validate_response(request, response)
        self.seen.add((pattern, method.lower(), status))
        return r


def run(registry: Registry, scenario: Callable[[Conformance], Awaitable[None]], **config: Any) -> None:
    app = create_app(ServeConfig(**{"metrics": False, "poll_s": 0.0, "evaluate": False, **config}),
                     registry=registry)

    async def main() -> None:
        async with running(app) as client:
            doc = (await client.get("/openapi.json")).json()
            validate(doc)  # a valid OpenAPI 3.1 document to begin with
            await scenario(Conformance(client, doc))

    asyncio.run(main())


def v2_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **extra}


M = {"name": "tiny"}
MV = {"name": "tiny", "version": "1"}
NOSUCH = {"name": "nosuch"}


async def _inference(c: Conformance) -> None:
    x = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    infer, infer_v = "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"
    r = await c.call("POST", infer, 200, params=M, json_body=v2_body(x[:1], id="conf-1"))
    assert [o["datatype"] for o in r.json()["outputs"]] == ["FP32", "BYTES"]  # with the `label` BYTES output
    binary = await c.call("POST", infer, 200, params=M, json_body=v2_body(x, parameters={"binary_data_output": True}))
    assert binary.headers["content-type"] == "application/octet-stream"
    header = int(binary.headers["inference-header-content-length"])
    c.api.validate_response(  # the binary answer's JSON header is an InferResponse too
        MockRequest(BASE, "POST", "/v2/models/tiny/infer", path_pattern=infer, view_args=M),
        MockResponse(binary.content[:header], 200, content_type="application/json"))
    await c.call("POST", infer_v, 200, params=MV, json_body=v2_body(x))
    await c.call("POST", infer, 400, params=M, body=b"{nope")
    await c.call("POST", infer, 404, params=NOSUCH, json_body=v2_body(x))
    await c.call("POST", infer_v, 404, params={"name": "tiny", "version": "9"}, json_body=v2_body(x))
    await c.call("POST", infer, 413, params=M, body=b"0" * (2 << 20))
    await c.call("POST", infer, 415, params=M, json_body=v2_body(x), headers={"content-encoding": "br"})
    await c.call("POST", infer, 421, params=M, json_body=v2_body(x), headers={"host": "evil.example"})

    predict = "/v1/models/{name}:predict"
    rows = await c.call("POST", predict, 200, params=M, json_body={"instances": x.tolist()})
    columns = await c.call("POST", predict, 200, params=M, json_body={"inputs": x.tolist()})
    assert len(rows.json()["predictions"]) == 2 == len(columns.json()["outputs"]["label"])
    pixels = np.zeros((1, 28, 28), np.uint8).tolist()
    named = await c.call("POST", predict, 200, params=M, json_body={"inputs": {"image": pixels}})
    assert set(named.json()["outputs"]) == {"label", "probabilities"}
    await c.call("POST", predict, 400, params=M, json_body={"instances": x.tolist(), "inputs": x.tolist()})
    await c.call("POST", predict, 404, params=NOSUCH, json_body={"instances": x.tolist()})
    await c.call("POST", predict, 413, params=M, body=b"0" * (2 << 20))

    explain, explain_v = "/v2/models/{name}/explain", "/v2/models/{name}/versions/{version}/explain"
    e = await c.call("POST", explain, 200, params=M, json_body=v2_body(x[:1], parameters={"method": "kernel_shap",
                                                                                          "samples": 64}))
    assert e.json()["parameters"]["method"] == "kernel_shap" and e.json()["outputs"][0]["shape"] == [1, 784]
    await c.call("POST", explain_v, 200, params=MV, json_body=v2_body(x[:1]))
    await c.call("POST", explain, 400, params=M, json_body=v2_body(x[:1], parameters={"steps": 0}))
    await c.call("POST", explain, 404, params=NOSUCH, json_body=v2_body(x[:1]))
    await c.call("POST", explain, 413, params=M, body=b"0" * (2 << 20))
    v1_explain = "/v1/models/{name}:explain"
    await c.call("POST", v1_explain, 200, params=M, json_body={"instances": x[:1].tolist()})
    await c.call("POST", v1_explain, 400, params=M, json_body={"instances": x[:1].tolist(),
                                                               "parameters": {"method": "lime"}})
    await c.call("POST", v1_explain, 404, params=NOSUCH, json_body={"instances": x[:1].tolist()})

    feedback = "/v2/models/{name}/feedback"
    label = r.json()["outputs"][1]["data"][0]
    await c.call("POST", feedback, 200, params=M, json_body={"feedback": [{"id": "conf-1", "label": label}]})
    await c.call("POST", feedback, 400, params=M, json_body={"feedback": []})
    await c.call("POST", feedback, 404, params=M, json_body={"feedback": [{"id": "never", "label": label}]})
    await c.call("POST", feedback, 403, params=M, json_body={"feedback": [{"id": "conf-1", "label": label}]},
                 headers={"origin": "https://evil.example"})
    await c.call("POST", feedback, 415, params=M, body=b"feedback", headers={"content-type": "text/plain"})


async def _reading(c: Conformance) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/", "/", "/v2/models", "/v1/models",
                 "/openapi.json", "/metrics", "/dashboard"):
        await c.call("GET", path, 200)
    for pattern in ("/v2/models/{name}", "/v2/models/{name}/ready", "/v1/models/{name}"):
        await c.call("GET", pattern, 200, params=M)
        await c.call("GET", pattern, 404, params=NOSUCH)
    for pattern in ("/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready"):
        await c.call("GET", pattern, 200, params=MV)
        await c.call("GET", pattern, 404, params={"name": "tiny", "version": "9"})
    await c.call("GET", "/v2/health/ready", 200, query={"strict": "1"})
    fragment = "/dashboard/fragment"
    await c.call("GET", fragment, 200, query={"model": "tiny", "minutes": "5"})
    await c.call("GET", fragment, 400, query={"model": "tiny", "minutes": "0"})
    await c.call("GET", fragment, 404, query={"model": "nosuch"})
    asset = "/dashboard/assets/{file}"
    await c.call("GET", asset, 200, params={"file": "charts.js"})
    await c.call("GET", asset, 404, params={"file": "nosuch.js"})


async def _management(c: Conformance) -> None:
    await c.call("GET", "/v2/repository/index", 200)
    await c.call("POST", "/v2/repository/index", 200)
    await c.call("POST", "/v2/repository/refresh", 200)
    traffic = "/v2/repository/models/{name}/traffic"
    got = await c.call("GET", traffic, 200, params=M)
    assert got.json()["weights"] == {"production": 100}
    await c.call("GET", traffic, 404, params=NOSUCH)
    await c.call("POST", traffic, 200, params=M, json_body={"weights": {"production": 90, "candidate": 10},
                                                            "shadow": None, "reason": "conformance"})
    await c.call("POST", traffic, 400, params=M, json_body={"weights": {"production": True}})
    await c.call("POST", traffic, 404, params=NOSUCH, json_body={"weights": {"production": 100}})
    unload, load = "/v2/repository/models/{name}/unload", "/v2/repository/models/{name}/load"
    await c.call("POST", unload, 200, params=M)
    await c.call("POST", unload, 404, params=M)
    await c.call("POST", load, 200, params=M)
    await c.call("POST", load, 400, params={"name": "tiny@@"})


def test_every_documented_operation_answers_as_documented(registry: Registry) -> None:
    seen: set[tuple[str, str, int]] = set()
    documented: set[tuple[str, str]] = set()

    async def scenario(c: Conformance) -> None:
        await _inference(c)
        await _reading(c)
        await _management(c)
        seen.update(c.seen)
        documented.update((p, m) for p, ops in c.doc["paths"].items() for m in ops)
        for pattern, method, status in c.seen:  # every status provoked is a documented one
            assert str(status) in c.doc["paths"][pattern][method]["responses"], (pattern, method, status)

    run(registry, scenario, max_body_mb=1.0)
    assert documented == {(p, m) for p, m, _ in seen}  # every operation exercised


def test_the_guards_answers_are_documented(registry: Registry) -> None:
    """With a token (and --auth-inference): 401 without it, on inference and management alike."""
    async def scenario(c: Conformance) -> None:
        x = np.zeros((1, 784), np.float32)
        await c.call("POST", "/v2/models/{name}/infer", 401, params=M, json_body=v2_body(x))
        await c.call("POST", "/v1/models/{name}:predict", 401, params=M, json_body={"inputs": x.tolist()})
        await c.call("GET", "/v2/models/{name}", 401, params=M)
        await c.call("GET", "/v2/repository/index", 401)
        await c.call("GET", "/v2/health/ready", 200)  # public: readiness without the detail
        ok = await c.call("POST", "/v2/models/{name}/infer", 200, params=M, json_body=v2_body(x),
                          headers={"authorization": "Bearer s3cret"})
        assert ok.json()["model_name"] == "tiny"

    run(registry, scenario, token="s3cret", auth_inference=True)

    async def closed(c: Conformance) -> None:
        await c.call("POST", "/v2/repository/models/{name}/unload", 403, params=M)

    run(registry, closed, host="0.0.0.0")
