"""The inference server as users meet it: a real `shipyard serve` process on a free loopback
port, talked to by the real tritonclient (V2, JSON and binary) and httpx (v1, bad input)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from shipyard.data import load
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime

from ..serving import serve

if TYPE_CHECKING:
    from ..conftest import Optimized


@contextmanager
def running_server(bundle_path: Path, home: Path) -> Iterator[tuple[str, int]]:
    """Register the bundle as digits@production in `home` and run `shipyard serve digits` on a
    free port until it reports ready; stop it afterwards."""
    from shipyard.settings import Settings

    Registry(settings=Settings(home=home)).register(bundle_path, "digits", alias="production")
    with serve(home, "digits") as srv:
        yield srv.base, srv.proc.pid


@pytest.fixture(scope="module")
def server(optimized: Optimized, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    home = tmp_path_factory.mktemp("serve") / "home"
    with running_server(optimized[2].path, home) as (base, pid):
        yield base, pid, home


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    s = load("mnist-sample").split()
    return s.x_val[:16], s.y_val[:16]


def client(base: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=base.removeprefix("http://"))


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infers_raw_and_features(server: tuple[str, int, Path], images: tuple[np.ndarray, np.ndarray],
                                              optimized: Optimized, binary: bool) -> None:
    base, _, _ = server
    x, y = images
    c = client(base)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
    meta = c.get_model_metadata("digits")
    assert {i["name"] for i in meta["inputs"]} == {"input", "image"}
    raw = triton.InferInput("image", [16, 28, 28], "UINT8")
    raw.set_data_from_numpy(x, binary_data=binary)
    res = c.infer("digits", [raw], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary),
                                           triton.InferRequestedOutput("label", binary_data=binary)],
                  request_id="req-1")
    probs = res.as_numpy("probabilities")
    labels = res.as_numpy("label")
    expected = ModelRuntime(optimized[2]).predict(optimized[2].preprocess.apply(x))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert [v.decode() if isinstance(v, bytes) else v for v in labels] == [str(i) for i in probs.argmax(1)]
    assert res.get_response()["id"] == "req-1" and res.get_response()["model_version"] == "1"
    feats = triton.InferInput("input", [16, 784], "FP32")
    feats.set_data_from_numpy(optimized[2].preprocess.apply(x), binary_data=binary)
    again = c.infer("digits", [feats]).as_numpy("probabilities")
    np.testing.assert_array_equal(again, probs)


def test_v1_predict_and_request_id(server: tuple[str, int, Path], images: tuple[np.ndarray, np.ndarray]) -> None:
    base, _, _ = server
    x, y = images
    r = httpx.post(f"{base}/v1/models/digits:predict", json={"instances": x[:3].tolist()})
    assert r.status_code == 200 and r.headers["x-request-id"] == r.json()["id"]
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(len(p["probabilities"]) == 10 for p in preds)


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v2/models/digits/infer", b"{nope", 400, "not valid JSON"),
    ("POST", "/v2/models/nosuch/infer", b"{}", 404, "unknown model 'nosuch'"),
    ("POST", "/v2/models/digits/versions/9/infer", b"{}", 404, "no version '9'"),
    ("POST", "/v2/models/digits/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}).encode(),
     400, "must have shape [-1, 784]"),
    ("POST", "/v2/models/digits/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}]}).encode(),
     400, "has no input 'x'"),
    ("POST", "/v2/models/digits/infer", b"0" * (9 << 20), 413, "over the"),
    ("GET", "/v2/models/digits/infer", b"", 405, "POST"),
    ("GET", "/nowhere", b"", 404, "no route"),
])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
        server: tuple[str, int, Path], method: str, path: str, body: bytes, status: int, message: str) -> None:
    base, _, _ = server
    r = httpx.request(method, f"{base}{path}", content=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200


def test_repository_routes_work_with_tritonclient(server: tuple[str, int, Path]) -> None:
    base, _, _ = server
    c = client(base)
    index = c.get_model_repository_index()
    assert [m["name"] for m in index] == ["digits"]
    c.unload_model("digits")
    assert httpx.post(f"{base}/v2/models/digits/infer", content=b"{}").status_code == 404
    c.load_model("digits")
    assert c.is_model_ready("digits")


def _family(pid: int) -> list[int]:
    """The server process and its workers (granian serves from child processes)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += _family(int(child))
    return out


def test_the_server_processes_never_load_torch(server: tuple[str, int, Path]) -> None:
    _, pid, _ = server
    maps = [Path(f"/proc/{p}/maps").read_text() for p in _family(pid)]
    assert any("onnxruntime" in m for m in maps), "no process holds the model"
    assert not any("libtorch" in m for m in maps)


def test_openapi_document_describes_every_route(server: tuple[str, int, Path]) -> None:
    base, _, _ = server
    doc = httpx.get(f"{base}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert {"/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/repository/index"} <= set(paths)
    for path, ops in paths.items():  # every documented route exists (answers something but "no route")
        url = base + path.replace("{name}", "digits").replace("{version}", "1")
        for method in ops:
            if path.endswith("/unload"):
                continue  # would unload the model the other tests use
            r = httpx.request(method.upper(), url, content=b"{}" if method == "post" else None)
            assert "no route" not in r.text, (method, path)
            assert r.status_code < 500, (method, path, r.text)


def test_schemathesis_finds_no_server_error_on_any_route(optimized: Optimized, tmp_path: Path) -> None:
    """Property-based fuzzing of every route in the OpenAPI document, on a server of its own
    (the fuzzer unloads and reloads models)."""
    with running_server(optimized[2].path, tmp_path / "home") as (base, _):
        st = Path(sys.executable).with_name("schemathesis")
        r = subprocess.run([str(st), "run", f"{base}/openapi.json", "-c", "not_a_server_error",
                            "-n", "25", "--no-color", "--seed", "1"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:]
        assert " passed" in r.stdout and "failed" not in r.stdout.split("SUMMARY")[-1]
