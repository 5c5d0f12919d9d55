"""No write without proof: what a web page, a rebound DNS name or a stranger guessing request ids
can do to a server — through the real app's ASGI interface, with a real SQLite registry."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.monitor.feedback import changes
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.config import ServeConfig
from shipyard.serve.http import HttpApp
from shipyard.settings import Settings

from ..asgi import running
from .test_app import Scenario, features, infer_body

EVIL = "http://evil.example"
SECRET = "a-feedback-secret-of-some-length"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    from harness.bundles import make_bundle

    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b1", seed=1), "tiny", alias="production")
    reg.register(make_bundle(tmp_path / "b2", seed=2), "tiny", alias="candidate")
    return reg


def run(registry: Registry, scenario: Scenario, **config: Any) -> None:
    app = create_app(ServeConfig(**{"metrics": False, "poll_s": 0.0, "evaluate": False, **config}),
                     registry=registry)

    async def main() -> None:
        async with running(app) as client:
            await scenario(client, app)

    asyncio.run(main())


def test_a_web_page_cannot_redeploy_or_relabel(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        split = json.dumps({"weights": {"candidate": 100}})
        # what a page can send without a CORS preflight: text/plain, with its Origin
        for headers in ({"origin": EVIL, "content-type": "text/plain"}, {"origin": EVIL},
                        {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}):
            r = await c.post("/v2/repository/models/tiny/traffic", content=split, headers=headers)
            assert r.status_code in (403, 415), (headers, r.text)
            assert ("cross-site" if "origin" in headers else "takes application/json") in r.json()["error"]
            r = await c.post("/v2/repository/models/tiny/unload", headers=headers)
            assert r.status_code in (403, 415)
            r = await c.post("/v2/models/tiny/feedback", content=b'{"feedback": [{"id": "x", "label": "1"}]}',
                             headers=headers)
            assert r.status_code in (403, 415)
        assert registry.traffic("tiny").weights == {"production": 100}
        assert (await c.post("/v2/models/tiny/infer", content=infer_body(features()))).status_code == 200
        # the CLI and real clients send JSON (or nothing) and no Origin: they keep working
        ok = await c.post("/v2/repository/models/tiny/traffic", content=split,
                          headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 200 and registry.traffic("tiny").weights == {"candidate": 100}
        assert (await c.post("/v2/repository/refresh")).status_code == 200

    run(registry, scenario, models=("tiny",))


def test_an_allowed_origin_may_write(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post("/v2/repository/refresh", headers={"origin": "https://ops.example.com"})
        assert r.status_code == 200
        assert (await c.post("/v2/repository/refresh", headers={"origin": EVIL})).status_code == 403

    run(registry, scenario, allowed_origins=("https://ops.example.com",))


def test_dns_rebinding_gets_nothing_from_a_loopback_server(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            r = await c.get("/v2/models/tiny", headers={"host": host})
            assert r.status_code == 421 and "loopback names only" in r.json()["error"], host
            r = await c.post("/v2/repository/models/tiny/unload", headers={"host": host})
            assert r.status_code == 421
        for host in ("localhost:8000", "127.0.0.1", "127.0.0.2:9", "[::1]:8000", "LOCALHOST", "models.internal"):
            assert (await c.get("/v2/models/tiny", headers={"host": host})).status_code == 200, host

    run(registry, scenario, allowed_hosts=("models.internal",))

    async def anywhere(c: httpx.AsyncClient, app: HttpApp) -> None:  # bound to every address: any name
        assert (await c.get("/v2/models/tiny", headers={"host": "models.example.com"})).status_code == 200

    run(registry, anywhere, host="0.0.0.0")


def test_server_request_ids_cannot_be_guessed(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        ids = [(await c.post("/v2/models/tiny/infer", content=infer_body(features(1)))).headers["x-request-id"]
               for _ in range(50)]
        assert len(set(ids)) == 50 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)  # 128 random bits
        # neighbours of a real id are no ids at all
        guesses = [ids[0][:-1] + c_ for c_ in "0123456789abcdef" if ids[0][:-1] + c_ != ids[0]]
        r = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": g, "label": "1"} for g in guesses]})
        assert r.json()["unknown"] == len(guesses) and r.json()["accepted"] == 0

    run(registry, scenario)


def test_with_a_feedback_secret_only_who_saw_the_answer_can_label_it(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        a = await c.post("/v2/models/tiny/infer", content=infer_body(features(1), id="mine"))
        b = await c.post("/v1/models/tiny:predict", json={"instances": features(1).tolist()})
        proof_a, proof_b = a.headers["x-feedback-token"], b.headers["x-feedback-token"]
        assert proof_a != proof_b and len(proof_a) == 32
        no = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "mine", "label": "1"}]})
        assert no.status_code == 403 and no.json()["forbidden"] == 1
        wrong = await c.post("/v2/models/tiny/feedback",
                             json={"feedback": [{"id": "mine", "label": "1", "token": proof_b}]})
        assert wrong.status_code == 403
        mixed = await c.post("/v2/models/tiny/feedback", json={"feedback": [
            {"id": "mine", "label": "1", "token": proof_a},
            {"id": b.headers["x-request-id"], "label": "2"}]})
        assert mixed.status_code == 200 and mixed.json()["accepted"] == 1 and mixed.json()["forbidden"] == 1
        assert [it["status"] for it in mixed.json()["items"]] == ["forbidden"]

    run(registry, scenario, feedback_secret=SECRET)


def test_a_changed_label_is_recorded_and_duplicates_in_a_batch_are_no_500(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        await c.post("/v2/models/tiny/infer", content=infer_body(features(1), id="p1"))
        first = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "p1", "label": "3"}]})
        assert first.status_code == 200 and changes(registry.engine, "tiny") == []
        twice = await c.post("/v2/models/tiny/feedback", json={"feedback": [
            {"id": "p1", "label": "4"}, {"id": "p1", "label": "5"}]})  # one batch, one id: the last wins
        assert twice.status_code == 200 and twice.json()["accepted"] == 2
        again = await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "p1", "label": "5"}]})
        assert again.status_code == 200
        log = changes(registry.engine, "tiny", "p1")
        assert [(ch["old_label"], ch["new_label"]) for ch in log] == [(3, 5)]  # the same label again: no change
        assert log[0]["client"] == "127.0.0.1" and log[0]["identity"] == "anonymous"

    run(registry, scenario)


def test_auth_inference_closes_everything_but_health(registry: Registry) -> None:
    token = {"authorization": "bEaReR s3cret"}  # the scheme is case-insensitive

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        for path in ("/v2/models/tiny", "/v2/models/tiny/ready", "/v1/models/tiny", "/metrics", "/dashboard",
                     "/dashboard/fragment?model=tiny"):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=token)).status_code == 200, path
        assert (await c.post("/v2/models/tiny/feedback", json={"feedback": [{"id": "x", "label": "1"}]})
                ).status_code == 401
        ready = await c.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "draining": False}
        assert "pid" in (await c.get("/v2/health/ready", headers=token)).json()
        assert (await c.get("/v2/health/live")).status_code == 200

    run(registry, scenario, token="s3cret", auth_inference=True, metrics=True)
