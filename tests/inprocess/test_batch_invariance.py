"""A request's answer does not depend on its batch-mates (issue 14 §7): through the served path
with batching on, an input gets the same probabilities alone and inside batches of 2 to 64; a
version whose answers do depend on them (dynamic int8: its activation scale comes from the whole
batch) is refused, at start-up and when an alias moves to it, or served unbatched when the
operator says so. Real ONNX Runtime, real registry, the app in this process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from harness.variant_bundles import dynamic_bundle
from harness.variant_bundles import int8_dynamic_onnx as int8_dynamic
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.config import ServeConfig
from shipyard.serve.http import HttpApp
from shipyard.settings import Settings

from ..asgi import running

X = np.random.default_rng(7).random((400, 784), dtype=np.float32)
#: batching that flushes only on a full batch: every batch holds exactly max_batch_size instances
FULL_ONLY = {"max_delay_ms": 60_000.0, "timeout_ms": 120_000.0}


@pytest.fixture(scope="module")
def int8_dynamic_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return int8_dynamic(tmp_path_factory.mktemp("int8-dynamic"))


def body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def serve(registry: Registry, scenario: Callable[[httpx.AsyncClient, HttpApp], Awaitable[None]],
          **config: Any) -> None:
    app = create_app(ServeConfig(**{"metrics": False, "poll_s": 0.0, **config}), registry=registry)

    async def main() -> None:
        async with running(app) as client:
            await asyncio.wait_for(scenario(client, app), 60)

    asyncio.run(main())


def refused(registry: Registry, **config: Any) -> str:
    """The start-up failure's message of a server that must not start."""
    app = create_app(ServeConfig(**{"metrics": False, "poll_s": 0.0, **config}), registry=registry)

    async def main() -> None:
        async with running(app):
            pass

    with pytest.raises(RuntimeError, match="did not start") as e:
        asyncio.run(main())
    return str(e.value)


async def infer(c: httpx.AsyncClient, x: np.ndarray) -> np.ndarray:
    r = await c.post("/v2/models/tiny/infer", content=body(x))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def alone(registry: Registry, x: np.ndarray) -> np.ndarray:
    """Each row of `x` in a request of its own, one after another: batching on with no delay, so
    each runs as a batch of one."""
    got: list[np.ndarray] = []

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        batcher = app.plane.fleet.get("tiny").batcher
        assert batcher is not None
        for row in x:
            got.append((await infer(c, row[None]))[0])
        assert batcher.stats["batches"] == batcher.stats["instances"] == len(x)

    serve(registry, scenario)
    return np.stack(got)


def requests_around(probe: np.ndarray, size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """`probe` (one instance) among other clients' requests that bring the total to `size`
    instances, at a random place: (the requests, the probe's index among them)."""
    mates = X[rng.integers(0, len(X), size - 1)]
    cuts = np.sort(rng.choice(np.arange(1, size - 1), min(size - 2, int(rng.integers(0, 8))), replace=False))
    requests = np.split(mates, cuts) if size > 2 else [mates]
    at = int(rng.integers(0, len(requests) + 1))
    requests.insert(at, probe[None])
    return requests, at


# -- an invariant version, batched ----------------------------------------------------------
def test_an_answer_alone_equals_its_answer_inside_random_batches_of_2_to_64(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    probes = rng.choice(len(X), 6, replace=False)
    solo = alone(registry, X[probes])
    worst = 0.0
    for size in [2, 64, *rng.integers(3, 64, 3).tolist()]:
        inside: list[np.ndarray] = []

        async def scenario(c: httpx.AsyncClient, app: HttpApp, size: int = size,
                           inside: list[np.ndarray] = inside) -> None:
            rt = app.plane.fleet.get("tiny")
            assert rt.batcher is not None and rt.serving["batching"]["invariance"] == {
                "invariant": True, "max_diff": 0.0, "measured": "at load (the bundle does not say)"}
            for k, probe in enumerate(probes):
                requests, at = requests_around(X[probe], size, rng)
                answers = await asyncio.gather(*(infer(c, r) for r in requests))
                inside.append(answers[at][0])
                # they all ran as one batch of exactly `size` (only a full batch flushes)
                assert rt.batcher.stats["batches"] == k + 1 and rt.batcher.stats["instances"] == size * (k + 1)

        serve(registry, scenario, max_batch_size=size, **FULL_ONLY)
        worst = max(worst, float(np.abs(np.stack(inside) - solo).max()))
    assert worst <= 1e-6, worst


# -- a batch-variant version ----------------------------------------------------------------
@pytest.mark.parametrize("measured", [True, False], ids=["bundle-says", "probed-at-load"])
def test_a_batch_variant_version_is_refused_at_start_up(tmp_path: Path, int8_dynamic_onnx: bytes,
                                                         measured: bool) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(dynamic_bundle(tmp_path / "d", int8_dynamic_onnx, measured=measured), "tiny", alias="production")
    message = refused(reg, models=("tiny",))
    assert "tiny version 1 (int8-dynamic) answers differently inside a batch than alone" in message
    assert ("differ by up to 0.012, measured by optimize" if measured else "measured at load") in message
    assert "--unbatched-if-variant" in message and "--max-batch-size 1" in message


def test_unbatched_if_variant_serves_it_unbatched_so_batch_mates_change_nothing(
        tmp_path: Path, int8_dynamic_onnx: bytes) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(dynamic_bundle(tmp_path / "d", int8_dynamic_onnx, measured=True), "tiny", alias="production")
    x = X[:40]

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        rt = app.plane.fleet.get("tiny")
        assert rt.batcher is None
        meta = (await c.get("/v2/models/tiny")).json()["parameters"]["batching"]
        assert meta["enabled"] is False and meta["invariance"]["invariant"] is False
        assert "answers differently inside a batch" in meta["unbatched"]
        solo = [await infer(c, row[None]) for row in x]
        together = await asyncio.gather(*(infer(c, row[None]) for row in x))
        assert np.array_equal(np.concatenate(solo), np.concatenate(together))
        # the same model batched would not answer so: the variance is real
        batch = rt.predict(np.ascontiguousarray(x))
        assert float(np.abs(batch - np.concatenate(solo)).max()) > 1e-6

    serve(reg, scenario, models=("tiny",), unbatched_if_variant=True)


def test_an_alias_moved_to_a_batch_variant_version_is_refused_and_the_old_one_keeps_serving(
        tmp_path: Path, int8_dynamic_onnx: bytes) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "a", seed=1), "tiny", alias="production")
    reg.register(dynamic_bundle(tmp_path / "d", int8_dynamic_onnx, measured=False), "tiny")

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        reg.set_alias("tiny", "production", 2, reason="test")
        r = await c.post("/v2/repository/refresh")
        assert r.status_code == 200 and r.json()["changed"] == []
        health = (await c.get("/v2/health/ready")).json()
        assert "tiny version 2 (int8-dynamic) answers differently inside a batch" in health["errors"]["tiny"]
        assert (await c.post("/v2/models/tiny/infer", content=body(X[:2]))).json()["model_version"] == "1"
        load = await c.post("/v2/repository/models/tiny@2/load")
        assert load.status_code == 409 and "refusing to batch it" in load.json()["error"]

    serve(reg, scenario, models=("tiny",))

    async def unbatched(c: httpx.AsyncClient, app: HttpApp) -> None:
        reg.set_alias("tiny", "production", 1, reason="back")
        await c.post("/v2/repository/refresh")
        reg.set_alias("tiny", "production", 2, reason="again")
        r = await c.post("/v2/repository/refresh")
        assert r.json()["changed"] == ["tiny"] and r.json()["errors"] == {}
        doc = (await c.post("/v2/models/tiny/infer", content=body(X[:2]))).json()
        assert doc["model_version"] == "2" and app.plane.fleet.get("tiny").batcher is None

    serve(reg, unbatched, models=("tiny",), unbatched_if_variant=True)


def test_without_batching_nothing_is_refused(tmp_path: Path, int8_dynamic_onnx: bytes) -> None:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(dynamic_bundle(tmp_path / "d", int8_dynamic_onnx, measured=True), "tiny", alias="production")

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        assert (await infer(c, X[:3])).shape == (3, 10)

    serve(reg, scenario, models=("tiny",), max_batch_size=1)
