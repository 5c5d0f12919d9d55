"""Malformed inputs through the whole server in this process (`create_app` over a real registry and
a tiny real bundle, driven through ASGI): every one is a 4xx naming the problem, never a 500; V2
and v1 follow one rule; client errors never count toward the `server-errors` alert; and a
property-based fuzz of V2 and v1 bodies finds no 5xx."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.codec import DATATYPES
from shipyard.serve.config import ServeConfig
from shipyard.serve.http import HttpApp
from shipyard.settings import Settings

from ..asgi import running

V2 = "/v2/models/tiny/infer"
V1 = "/v1/models/tiny:predict"
SIGNATURE = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784]},
                        {"name": "image", "dtype": "uint8", "shape": [-1, 28, 28], "kind": "raw"}],
             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """One model taking ready features (FP32 784) or raw pixels (UINT8 28×28), with a reference
    profile (so the prediction log projects each input)."""
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b1", seed=1, reference=True, signature=SIGNATURE), "tiny",
                 alias="production")
    return reg


def v2(data: Any = None, *, datatype: Any = "FP32", shape: Any = None, name: str = "input", **extra: Any) -> bytes:
    data = [0.5] * 784 if data is None else data
    spec = {"name": name, "datatype": datatype, "shape": [1, 784] if shape is None else shape, "data": data}
    return json.dumps({"inputs": [spec], **extra}).encode()


def pixels(value: Any) -> list[Any]:
    return [value] + [0] * 783


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


GOOD_V2 = v2()
GOOD_V1 = json.dumps({"instances": [[0.5] * 784]}).encode()


def run(registry: Registry, scenario: Callable[[httpx.AsyncClient, HttpApp], Awaitable[None]], **config: Any) -> None:
    app = create_app(ServeConfig(**{"metrics": False, "poll_s": 0.0, **config}), registry=registry)

    async def main() -> None:
        async with running(app) as client:
            await scenario(client, app)

    asyncio.run(main())


# -- every case named in issue 14 §4, V2 and v1 ---------------------------------------------------
CASES = [
    # nesting past the parser's limit (it answered 500 on V2, 400 on v1)
    ("v2-deep", V2, b'{"inputs": ' + deep(100_000) + b"}", 400, "nested too deeply"),
    ("v2-deep-body", V2, deep(100_000), 400, "nested too deeply"),
    ("v1-deep", V1, b'{"instances": ' + deep(100_000) + b"}", 400, "nested too deeply"),
    ("v2-deep-params", V2, v2(parameters={"x": json.loads(deep(200))}), 400, "nested too deeply"),
    # numbers past 64 bits, and shapes too large or too many dimensions
    ("v2-bigint-data", V2, v2([10**30] + [0] * 783), 400, "number too large"),
    ("v1-bigint", V1, json.dumps({"instances": [[10**30] + [0] * 783]}).encode(), 400, "number too large"),
    ("v2-bigint-shape", V2, v2(shape=[10**30, 784]), 400, "number too large"),
    ("v2-huge-shape", V2, v2(shape=[2**40, 784]), 413, "holds more than"),
    ("v2-10000-dims", V2, v2([0.5], shape=[1] * 10_000), 400, "'shape' has 10,000 dimensions"),
    # floats stay finite in float32 math: within ±1e15 (3e38 is a finite FP32, but the model would
    # answer NaN and the prediction log overflow), the same rule for V2 JSON, V2 binary and v1
    ("v1-float-too-large", V1, json.dumps({"instances": [[3e38] + [0] * 783]}).encode(), 400,
     "input 'input': 3e+38 is not a finite number within ±1e+15"),
    ("v2-float-too-large", V2, v2([3e38] + [0.0] * 783), 400,
     "input 'input': 3e+38 is not a finite number within ±1e+15"),
    ("v2-fp32-overflow", V2, v2([1e39] + [0.0] * 783), 400, "1e+39 is not a finite number within ±1e+15"),
    ("v2-json-inf", V2, v2([1e400] + [0.0] * 783).replace(b"Infinity", b"1e400"), 400, "number"),
    # integer inputs take whole numbers in range: the same message on V2 and v1
    ("v2-uint8-fraction", V2, v2(pixels(1.7), datatype="UINT8", shape=[1, 28, 28], name="image"), 400,
     "input 'image': UINT8 takes whole numbers in 0..255, got 1.7"),
    ("v1-uint8-fraction", V1, json.dumps({"instances": [np.reshape(pixels(1.7), (28, 28)).tolist()]}).encode(), 400,
     "input 'image': UINT8 takes whole numbers in 0..255, got 1.7"),
    ("v2-uint8-range", V2, v2(pixels(256), datatype="UINT8", shape=[1, 28, 28], name="image"), 400,
     "input 'image': UINT8 takes whole numbers in 0..255, got 256"),
    ("v1-uint8-range", V1, json.dumps({"instances": [np.reshape(pixels(256), (28, 28)).tolist()]}).encode(), 400,
     "input 'image': UINT8 takes whole numbers in 0..255, got 256"),
    ("v2-uint8-negative", V2, v2(pixels(-1), datatype="UINT8", shape=[1, 28, 28], name="image"), 400,
     "UINT8 takes whole numbers in 0..255, got -1"),
    # floats take numbers, not booleans (nor null nor strings)
    ("v2-bool-as-fp32", V2, v2([True] + [0.5] * 783), 400, "FP32 takes numbers, not booleans (got true)"),
    ("v2-all-bool-as-fp32", V2, v2([True] * 784), 400, "takes numbers, not booleans"),
    ("v1-bool", V1, json.dumps({"instances": [[True] + [0.5] * 783]}).encode(), 400,
     "takes numbers, not booleans (got true)"),
    ("v2-bool-as-uint8", V2, v2(pixels(True), datatype="UINT8", shape=[1, 28, 28], name="image"), 400,
     "UINT8 takes numbers, not booleans"),
    ("v2-null", V2, v2([None] + [0.5] * 783), 400, "takes numbers, not null"),
    ("v2-string", V2, v2(["1"] + [0.5] * 783), 400, "takes numbers, not strings"),
    ("v1-string", V1, json.dumps({"instances": [["1"] + [0.5] * 783]}).encode(), 400, "takes numbers, not strings"),
    ("v2-data-scalar", V2, v2(0.5, shape=[1, 1]), 400, "'data' must be an array"),
    # flags are JSON booleans
    ("v2-binary-output-string", V2, v2(parameters={"binary_data_output": "false"}), 400,
     "parameters.binary_data_output must be true or false (a JSON boolean), got 'false'"),
    ("v2-binary-data-string", V2, v2(outputs=[{"name": "label", "parameters": {"binary_data": "true"}}]), 400,
     "output 'label': parameters.binary_data must be true or false"),
    ("v2-binary-size-bool", V2,
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                             "parameters": {"binary_data_size": True}}]}).encode(), 400,
     "binary_data_size must be a non-negative integer"),
    ("v2-outputs-not-list", V2, v2(outputs=5), 400, "'outputs' must be a list"),
    ("v2-parameters-not-object", V2, v2(parameters=[1]), 400, "'parameters' must be an object"),
    ("v2-output-twice", V2, v2(outputs=[{"name": "label"}, {"name": "label"}]), 400, "requested more than once"),
    # duplicate keys are refused wherever they are, V2 and v1 alike
    ("v2-duplicate-data", V2, GOOD_V2.replace(b'"data": [', b'"data": [], "data": [', 1), 400,
     "key 'data' appears more than once"),
    ("v2-duplicate-top", V2, GOOD_V2.replace(b'{"inputs"', b'{"id": "a", "id": "b", "inputs"', 1), 400,
     "key 'id' appears more than once"),
    ("v2-duplicate-parameters", V2, v2().replace(b'"inputs"', b'"parameters": {"binary_data_output": true, '
                                                  b'"binary_data_output": false}, "inputs"', 1), 400,
     "key 'binary_data_output' appears more than once"),
    ("v1-duplicate", V1, GOOD_V1.replace(b'{"instances"', b'{"instances": [], "instances"', 1), 400,
     "key 'instances' appears more than once"),
    ("v2-many-keys", V2, json.dumps({"inputs": [], "parameters": {str(i): i for i in range(1000)}}).encode(), 400,
     "holds 1000 keys"),
    # the rest of the rule: shapes and ragged instances
    ("v1-ragged", V1, b'{"instances": [[1, 2], [3]]}', 400, "equally shaped arrays of numbers"),
    ("v2-datatype-list", V2, v2(datatype=["FP32"]), 400, "datatype ['FP32'] is not one of"),  # found by the fuzz
    ("v2-bad-utf8", V2, b'{"inputs": "\xff"}', 400, "not valid JSON"),
]


@pytest.mark.parametrize(("case", "path", "body", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_malformed_bodies_get_a_4xx_naming_the_problem(registry: Registry, case: str, path: str, body: bytes,
                                                       status: int, message: str) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert message in r.json()["error"], r.json()["error"]
        ok = await c.post(V2, content=GOOD_V2, headers={"content-type": "application/json"})
        assert ok.status_code == 200, ok.text

    run(registry, scenario, max_body_mb=4.0)


def test_valid_edges_still_pass(registry: Registry) -> None:
    """What the rule keeps: whole floats for integer inputs, nested data, the largest float served."""
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        for body in (v2(pixels(2.0), datatype="UINT8", shape=[1, 28, 28], name="image"),
                     v2(np.reshape(pixels(255), (1, 28, 28)).tolist(), datatype="UINT8", shape=[1, 28, 28],
                        name="image"),
                     v2([[0.5] * 784]), v2([1e15] + [-1e15] * 783)):
            r = await c.post(V2, content=body)
            assert r.status_code == 200, r.text
        r = await c.post(V1, json={"instances": [np.reshape(pixels(255), (28, 28)).tolist()]})
        assert r.status_code == 200, r.text

    run(registry, scenario)


def test_a_huge_input_does_not_poison_the_prediction_log(registry: Registry) -> None:
    """3e38 (a finite FP32) is refused in binary form too; the largest served value, 1e15, is
    logged with its float16 projection clipped to ±65504 (`Projection.project`), never inf."""
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        x = np.full((1, 784), 3e38, np.float32)
        header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                         "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        r = await c.post(V2, content=header + x.tobytes(),
                         headers={"inference-header-content-length": str(len(header))})
        assert r.status_code == 400 and "instance 0 holds 3e+38, not a finite number within ±1e+15" in r.json()["error"]
        r = await c.post(V2, content=v2([1e15] * 392 + [-1e15] * 392))
        assert r.status_code == 200, r.text
        assert all(np.isfinite(r.json()["outputs"][0]["data"]))
        rt = app.plane.pick("tiny")
        big = np.full((2, 784), 1e15, np.float32)
        big[1] = np.linspace(-1e15, 1e15, 784, dtype=np.float32)
        projected = rt.project([big[:1], big[1:]])
        assert projected is not None and projected.dtype == np.float16 and np.isfinite(projected).all()
        assert np.abs(projected).max() == np.finfo(np.float16).max
        extreme = rt.project(np.full((1, 784), 3e38, np.float32))  # float32 math overflows: redone in float64
        assert extreme is not None and np.isfinite(extreme).all()
        normal = rt.project(np.full((1, 784), 0.5, np.float32))
        assert normal is not None and np.abs(normal).max() < 1000

    run(registry, scenario)


def test_client_errors_never_count_as_server_errors(registry: Registry) -> None:
    """The `server-errors` alert reads the `errors` column of serving statistics: only 5xx. Every
    malformed body above is a rejection (400/413), counted apart; a real fault still counts."""
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        stats = app.plane.serving_stats
        assert stats is not None
        stats.take(force=True)
        for _case, path, body, _status, _message in CASES:
            assert (await c.post(path, content=body)).status_code < 500
        app.plane.request_metrics.flush()
        rows = stats.take(force=True)
        assert sum(r["errors"] for r in rows) == 0, rows
        assert sum(r["rejected"] for r in rows) == len(CASES)

        rt = app.plane.pick("tiny")

        def broken(features: np.ndarray) -> np.ndarray:
            raise RuntimeError("a server fault")

        rt.predict = broken  # type: ignore[method-assign]
        if rt.batcher is not None:
            rt.batcher.close()
            rt.batcher = None
        assert (await c.post(V2, content=GOOD_V2)).status_code == 500
        app.plane.request_metrics.flush()
        assert sum(r["errors"] for r in stats.take(force=True)) == 1

    run(registry, scenario, metrics=True, max_body_mb=4.0)


# -- property-based fuzz ------------------------------------------------------------------------
@contextmanager
def served(registry: Registry) -> Iterator[Callable[[str, bytes], tuple[int, Any]]]:
    """The app on an event loop in a thread; yields post(path, body) → (status, JSON body), so
    hypothesis (synchronous) can drive it request by request."""
    app = create_app(ServeConfig(metrics=False, poll_s=0.0, max_body_mb=4.0), registry=registry)
    loop = asyncio.new_event_loop()
    ready: Future[httpx.AsyncClient] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        async with running(app) as client:
            ready.set_result(client)
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    client = ready.result(timeout=60)

    def post(path: str, body: bytes) -> tuple[int, Any]:
        r = asyncio.run_coroutine_threadsafe(client.post(path, content=body), loop).result(timeout=30)
        return r.status_code, r.json()

    try:
        yield post
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=4), max_leaves=12)
NUMBERS = (st.booleans() | st.integers(min_value=-(2**66), max_value=2**66)
           | st.floats(allow_nan=False, allow_infinity=False, width=64))
DATATYPE = st.sampled_from([*DATATYPES, "BYTES", "fp32"]) | JSON
SHAPE = st.lists(st.integers(min_value=-2, max_value=2**64), min_size=0, max_size=4) | st.sampled_from(
    [[1, 784], [1, 28, 28], [2, 784], [1] * 40]) | JSON
DATA = (st.lists(NUMBERS, max_size=8) | st.just([0.5] * 784) | st.just([[0] * 28] * 28)
        | st.lists(NUMBERS, min_size=784, max_size=784) | JSON)
INPUT = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["input", "image", "x", ""]) | JSON, "datatype": DATATYPE, "shape": SHAPE, "data": DATA,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": NUMBERS | JSON}) | JSON})
OUTPUT = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["probabilities", "label", "nope"]) | JSON,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data": JSON}) | JSON})
V2_DOC = st.fixed_dictionaries({}, optional={
    "inputs": st.lists(INPUT, max_size=3) | JSON, "id": st.text(max_size=8) | JSON,
    "outputs": st.lists(OUTPUT, max_size=3) | JSON,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": JSON}) | JSON}) | JSON


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid body with one byte-level change: a byte replaced, a cut, an insertion (a key
    twice, deep nesting, a number out of range, a boolean), or a duplicated slice."""
    body = bytearray(valid)
    at = draw(st.integers(min_value=0, max_value=len(body)))
    how = draw(st.sampled_from(["replace", "cut", "insert", "slice"]))
    if how == "replace" and at < len(body):
        body[at] = draw(st.integers(min_value=0, max_value=255))
    elif how == "cut":
        del body[at:]
    elif how == "insert":
        body[at:at] = draw(st.sampled_from([b'"data": [1], ', b"[[[[", b"1e999", b"true,", b"-", b",", b'"', b"}",
                                            b"18446744073709551616", b'"inputs": [], ', deep(2000)]))
    else:
        end = draw(st.integers(min_value=at, max_value=len(body)))
        body[at:at] = body[at:end]
    return bytes(body)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
SMALL_V2 = v2([0.5] * 3, shape=[1, 3])  # short, so a mutation lands in its structure more often


def check(post: Callable[[str, bytes], tuple[int, Any]], path: str, body: bytes) -> None:
    status, doc = post(path, body)
    assert status < 500, (status, doc, body[:300])
    if status != 200:
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc


def test_fuzz_v2_bodies_never_answer_5xx(registry: Registry) -> None:
    with served(registry) as post:
        @FUZZ
        @given(st.one_of(V2_DOC.map(lambda d: json.dumps(d).encode()), mutated(GOOD_V2), mutated(SMALL_V2)))
        def fuzz(body: bytes) -> None:
            check(post, V2, body)

        fuzz()
        assert post(V2, GOOD_V2)[0] == 200


def test_fuzz_v1_bodies_never_answer_5xx(registry: Registry) -> None:
    instances = (st.lists(st.lists(NUMBERS, min_size=784, max_size=784), min_size=1, max_size=2)
                 | st.lists(st.lists(st.lists(NUMBERS, min_size=28, max_size=28), min_size=28, max_size=28),
                            min_size=1, max_size=1) | JSON)
    doc = st.fixed_dictionaries({}, optional={"instances": instances, "id": JSON}) | JSON
    small = b'{"instances": [[0.5, 1, 2]]}'
    with served(registry) as post:
        @FUZZ
        @given(st.one_of(doc.map(lambda d: json.dumps(d).encode()), mutated(GOOD_V1), mutated(small)))
        def fuzz(body: bytes) -> None:
            check(post, V1, body)

        fuzz()
        assert post(V1, GOOD_V1)[0] == 200


def test_header_numbers_in_other_scripts_are_a_400(registry: Registry) -> None:
    """Header values arrive as latin-1 text: "²" (0xB2) passes str.isdigit but not int()."""
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        for value in (b"\xb2", b"1\xb3", b"\xd9\xa3"):
            r = await c.post(V2, content=v2([[0.5] * 784]), headers={"inference-header-content-length": value})
            assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]

    run(registry, scenario)
