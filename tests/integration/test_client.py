"""`shipyard.Client` against a real `shipyard serve` process (token required for inference):
arrays and images, binary and JSON, feedback with the ids it hands back, typed errors carrying
the server's message; the 503 retry against a tiny stub; the DataFrame encoding (the server
takes no column inputs yet) decoded back here by our own reading of the wire format."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

import shipyard
from shipyard.client import (
    AuthError,
    BadRequestError,
    Client,
    NotFoundError,
    OverloadedError,
    TransportError,
)
from shipyard.data import load
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import _free_port
from ..serving import serve, server_env

if TYPE_CHECKING:
    from ..conftest import Optimized

TOKEN = "client-test-token-0123456789"
SECRET = "feedback-secret-0123456789"


@pytest.fixture(scope="module")
def base(optimized: Optimized, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("client") / "home"
    Registry(settings=Settings(home=home)).register(optimized[2].path, "digits", alias="production")
    with serve(home, "digits", "--auth-inference", env=server_env(home, SHIPYARD_TOKEN=TOKEN)) as srv:
        yield srv.base


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load("mnist-sample").split().x_val[:8]


@pytest.fixture(scope="module")
def expected(optimized: Optimized, images: np.ndarray) -> np.ndarray:
    """The bundle's probabilities, computed in this process."""
    from shipyard.serve.runtime import ModelRuntime

    bundle = optimized[2]
    return ModelRuntime(bundle).predict(bundle.preprocess.apply(images))


@pytest.fixture
def client(base: str) -> Iterator[Client]:
    with Client(base, token=TOKEN) as c:
        yield c


def test_import_stays_light() -> None:
    code = ("import sys, shipyard; before = set(sys.modules); c = shipyard.Client; new = set(sys.modules) - before; "
            "print([m for m in ('torch', 'onnxruntime', 'shipyard.serve', 'pandas', 'PIL') "
            "if m in sys.modules and (m in new or m in ('torch', 'onnxruntime', 'shipyard.serve'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # pandas and Pillow only when a DataFrame or an image is given
    assert shipyard.Client is Client


@pytest.mark.parametrize("binary", [True, False])
def test_predict_pixels_and_features(client: Client, images: np.ndarray, expected: np.ndarray,
                                     optimized: Optimized, binary: bool) -> None:
    p = client.predict("digits", images, binary=binary)
    assert p.probabilities.dtype == np.float32 and p.probabilities.shape == (8, 10)
    np.testing.assert_allclose(p.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert p.labels.dtype.kind == "U" and p.labels.tolist() == [str(i) for i in expected.argmax(1)]
    assert len(p.request_id) == 32 and p.instance_ids == [f"{p.request_id}/{j}" for j in range(8)]
    assert (p.model_name, p.model_version, len(p)) == ("digits", "1", 8)
    features = optimized[2].preprocess.apply(images).astype(np.float64)  # cast to the input's FP32 by the client
    again = client.predict("digits", features, binary=binary, request_id="mine-1")
    np.testing.assert_array_equal(again.probabilities, p.probabilities)
    assert again.request_id == "mine-1"


def test_binary_and_json_agree(client: Client, images: np.ndarray) -> None:
    a = client.predict("digits", images, binary=True)
    b = client.predict("digits", images, binary=False)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.labels, b.labels)
    one = client.predict("digits", images[:1], outputs=["label"])
    assert set(one.outputs) == {"label"} and one.instance_ids == [one.request_id]


def test_list_of_images(client: Client, images: np.ndarray, expected: np.ndarray) -> None:
    from PIL import Image

    pil = [Image.fromarray(x) for x in images[:4]]
    np.testing.assert_allclose(client.predict("digits", pil).probabilities, expected[:4], rtol=1e-5, atol=1e-6)
    rgb = [Image.fromarray(x).convert("RGB") for x in images[:2]]  # back to grayscale by the client
    np.testing.assert_allclose(client.predict("digits", rgb).probabilities, expected[:2], rtol=1e-5, atol=1e-6)
    arrays = [x.astype(np.int64) for x in images[:3]]
    np.testing.assert_allclose(client.predict("digits", arrays).probabilities, expected[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not uint8"):
        client.predict("digits", [x / 255.0 for x in images[:2]])


def test_feedback_with_the_returned_ids(client: Client, images: np.ndarray) -> None:
    many = client.predict("digits", images[:3])
    one = client.predict("digits", images[3:4])
    got = client.feedback("digits", many.instance_ids + one.instance_ids, ["1", "2", "3", 4])
    assert (got.accepted, got.unknown, got.items) == (4, 0, [])
    mixed = client.feedback("digits", [one.request_id, "never-seen"], np.array(["7", "7"]))
    assert (mixed.accepted, mixed.unknown) == (1, 1) and mixed.items[0]["id"] == "never-seen"
    with pytest.raises(NotFoundError, match="never-seen") as e:  # one unknown id: the server's 404
        client.feedback("digits", ["never-seen"], ["7"])
    assert e.value.status == 404
    with pytest.raises(BadRequestError, match="not one of the model's classes"):
        client.feedback("digits", one, ["cat"])


def test_models_and_metadata(client: Client) -> None:
    assert [(m.name, m.version, m.state) for m in client.models()] == [("digits", "1", "READY")]
    meta = client.metadata("digits", version=1)
    assert {i["name"] for i in meta["inputs"]} == {"input", "image"} and client.ready()


def test_errors_carry_the_servers_message(base: str, client: Client, images: np.ndarray) -> None:
    raw = httpx.get(f"{base}/v2/models/nope", headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(NotFoundError) as nf:
        client.predict("nope", images)
    assert nf.value.status == 404 and nf.value.message == raw.json()["error"] and "nope" in nf.value.message
    with pytest.raises(BadRequestError) as bad:  # fits no input: sent as the features, refused naming them
        client.predict("digits", np.zeros((3, 5), dtype=np.float32))
    assert bad.value.status == 400 and "'input'" in bad.value.message and "[3, 5]" in bad.value.message
    with pytest.raises(BadRequestError, match=r"input 'image' must have shape \[-1, 28, 28\]"):
        client.predict("digits", images[:, :20, :20], input_name="image", binary=False)
    with Client(base) as anonymous, pytest.raises(AuthError) as auth:
        anonymous.predict("digits", images, input_name="image")
    assert auth.value.status == 401 and auth.value.message == "missing or wrong bearer token"
    with Client(base, token="wrong") as wrong, pytest.raises(AuthError):
        wrong.models()


# -- retries: a stub server, not one of ours ----------------------------------------------------
class _Stub(http.server.BaseHTTPRequestHandler):
    busy = 0  # how many requests still get a 503
    retry_after = "0"
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits += 1
        if type(self).busy > 0:
            type(self).busy -= 1
            body, status = b'{"error": "queue full, retry shortly"}', 503
        else:
            body, status = b'{"models": [{"name": "m", "version": "3", "state": "READY"}]}', 200
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", type(self).retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[type[_Stub], str]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Stub, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        _Stub.busy, _Stub.hits, _Stub.retry_after = 0, 0, "0"


def test_503_is_retried_as_many_times_as_asked(stub: tuple[type[_Stub], str]) -> None:
    stub, url = stub
    stub.busy = 2
    with Client(url, retries=2) as c:
        assert c.models()[0].version == "3" and stub.hits == 3
    stub.busy, stub.hits = 5, 0
    with Client(url, retries=1) as c, pytest.raises(OverloadedError) as e:
        c.models()
    assert stub.hits == 2 and e.value.status == 503 and e.value.message == "queue full, retry shortly"
    stub.busy, stub.hits, stub.retry_after = 1, 0, "1"
    t0 = time.monotonic()
    with Client(url, retries=1) as c:
        c.models()
    assert time.monotonic() - t0 >= 0.95 and stub.hits == 2  # the header's delay
    stub.busy, stub.hits, stub.retry_after = 1, 0, "3600"
    t0 = time.monotonic()
    with Client(url, retries=1, max_retry_wait=0.2) as c:
        c.models()
    assert time.monotonic() - t0 < 2 and stub.hits == 2  # capped


def test_connection_refused_is_retried_then_raised() -> None:
    t0 = time.monotonic()
    with Client(f"http://127.0.0.1:{_free_port()}", retries=2) as c, pytest.raises(TransportError,
                                                                                  match="cannot connect"):
        c.models()
    assert 0.25 <= time.monotonic() - t0 < 5  # 0.1 + 0.2 s of backoff


# -- DataFrames: the encoding, read back by our own decoder ----------------------------------------
def _decode_request(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A V2 request body → (its JSON header, {input: values}) by the binary extension's rules:
    binary tensors follow the header in order; BYTES elements are a 4-byte little-endian length
    and the UTF-8 bytes."""
    doc = json.loads(body[:header_length] if header_length is not None else body)
    rest, values = body[header_length:] if header_length is not None else b"", {}
    for spec in doc["inputs"]:
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[spec["name"]] = spec["data"]
            continue
        raw, rest = rest[:size], rest[size:]
        if spec["datatype"] == "BYTES":
            out = []
            while raw:
                n = int.from_bytes(raw[:4], "little")
                out.append(raw[4:4 + n].decode())
                raw = raw[4 + n:]
            values[spec["name"]] = out
        else:
            dtype = {"FP32": "<f4", "BOOL": "?"}[spec["datatype"]]
            values[spec["name"]] = np.frombuffer(raw, dtype=dtype).tolist()
    assert rest == b""
    return doc, values


@pytest.mark.parametrize("binary", [True, False])
def test_dataframe_encoding(binary: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from shipyard import client as client_mod
    from shipyard.serve.codec import encode_v2  # the server's own encoding of the answer

    df = pd.DataFrame({"age": [34, 22, 51], "income": [1.5, np.nan, 3.25], "city": ["Köln", "Oslo", ""],
                       "tier": pd.Categorical(["a", "b", "a"]), "member": [True, False, True]})
    sent: list[tuple[bytes, dict[str, str]]] = []

    def fake_request(self: Client, method: str, path: str, *, content: bytes | None = None,
                     headers: dict[str, str] | None = None) -> httpx.Response:
        assert method == "POST" and path == "/v2/models/tabular/infer" and content is not None
        sent.append((content, dict(headers or {})))
        body, hlen = encode_v2("tabular", "2", "r", [("probabilities", np.full((3, 2), 0.5, np.float32), binary),
                                                     ("label", np.array(["yes", "no", "yes"], dtype=object), binary)])
        head = {"inference-header-content-length": str(hlen)} if hlen is not None else {}
        return httpx.Response(200, content=body, headers=head)

    monkeypatch.setattr(client_mod.Client, "_request", fake_request)
    with Client("http://127.0.0.1:9") as c:
        p = c.predict("tabular", df, binary=binary)
    assert p.labels.tolist() == ["yes", "no", "yes"] and p.probabilities.shape == (3, 2)
    assert (p.request_id, p.model_version, p.instance_ids) == ("r", "2", ["r/0", "r/1", "r/2"])
    body, headers = sent[0]
    hlen = int(headers["Inference-Header-Content-Length"]) if binary else None
    assert ("Inference-Header-Content-Length" in headers) == binary
    doc, values = _decode_request(body, hlen)
    assert doc["parameters"]["content_type"] == "pd"
    kinds = {i["name"]: (i["datatype"], i["shape"], (i.get("parameters") or {}).get("content_type"))
             for i in doc["inputs"]}
    assert kinds == {"age": ("FP32", [3], None), "income": ("FP32", [3], None), "city": ("BYTES", [3], "str"),
                     "tier": ("BYTES", [3], "str"), "member": ("BOOL", [3], None)}
    assert values["age"] == [34.0, 22.0, 51.0] and values["city"] == ["Köln", "Oslo", ""]
    assert values["tier"] == ["a", "b", "a"] and values["member"] == [True, False, True]
    assert values["income"][0] == 1.5 and values["income"][2] == 3.25
    assert (np.isnan(values["income"][1]) if binary else values["income"][1] is None)  # JSON has no NaN
    with pytest.raises(ValueError, match="missing values"):
        Client("http://127.0.0.1:9").predict("tabular", pd.DataFrame({"city": ["Oslo", None]}))


def test_feedback_token_is_sent_back(optimized: Optimized, tmp_path: Path, images: np.ndarray) -> None:
    """A server with a feedback secret takes a label only with its answer's token: the client
    sends the one it saw with the answer."""
    home = tmp_path / "home"
    Registry(settings=Settings(home=home)).register(optimized[2].path, "digits", alias="production")
    with serve(home, "digits", env=server_env(home, SHIPYARD_FEEDBACK_SECRET=SECRET)) as srv, Client(srv.base) as c:
        p = c.predict("digits", images[:1])
        assert p.feedback_token is not None and len(p.feedback_token) == 32
        assert c.feedback("digits", p, ["5"]).accepted == 1
        with Client(srv.base) as other:
            with pytest.raises(AuthError, match="feedback token") as e:
                other.feedback("digits", p.instance_ids, ["5"])  # never saw the answer
            assert e.value.status == 403
            assert other.feedback("digits", p.instance_ids, ["5"], tokens=[p.feedback_token]).accepted == 1
        several = c.predict("digits", images[:3])  # instances ID/0, ID/1, ID/2: the request's token proves each
        assert several.instance_ids == [f"{several.request_id}/{j}" for j in range(3)]
        assert c.feedback("digits", several, ["5", "0", "4"]).accepted == 3
        with Client(srv.base) as other, pytest.raises(AuthError):  # another answer's token proves nothing
            other.feedback("digits", [f"{p.request_id}/0"], ["5"], tokens=[several.feedback_token or ""])
